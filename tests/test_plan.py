"""SparsityPlan: round trip, queries, atomic save, and every PlanError path."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsevdit import patterns
from sparsevdit.layout import TokenLayout
from sparsevdit.plan import PLAN_FORMAT, PLAN_VERSION, HeadSpec, LayerEntry, ModelSignature, PlanError, SparsityPlan

MODEL = ModelSignature("WanTransformer3DModel", num_layers=4, num_heads=3, head_dim=64)
LAYOUT = TokenLayout(3, 2, 4, 5, "prefix")  # 29 tokens
BLOCK = 8

DIAG = HeadSpec("diagonal", {"width": 8})
STRIPE = HeadSpec("vertical_stripe", {"sink_frames": 1})
DENSE = HeadSpec("dense")


def make_plan(metadata: dict | None = None) -> SparsityPlan:
    entries = [
        LayerEntry(0, (DIAG, STRIPE, DIAG)),
        LayerEntry(1, (DIAG, DIAG, DENSE), step_start=0, step_end=10),
        LayerEntry(1, (STRIPE, HeadSpec("skip"), DENSE), step_start=10, step_end=None),
        LayerEntry(3, (HeadSpec("multi_diagonal", {"width": 6, "text_rows": False}),) * 3, step_start=2, step_end=5),
    ]
    return SparsityPlan(MODEL, LAYOUT, BLOCK, entries, metadata if metadata is not None else {"source": "test", "threshold": 0.9})


def valid_dict() -> dict:
    return make_plan().to_dict()


def plan_error(data, **kwargs) -> PlanError:
    with pytest.raises(PlanError) as info:
        SparsityPlan.from_dict(data, **kwargs)
    return info.value


def assert_error(err: PlanError, field: str, found, *expected_parts: str) -> None:
    assert isinstance(err, ValueError)
    assert err.field == field
    assert err.found == found and type(err.found) is type(found)
    msg = str(err)
    assert field in msg
    assert repr(found) in msg
    assert err.expected and err.expected in msg
    for part in expected_parts:
        assert part in err.expected, (part, err.expected)


def check(data, field: str, found, *expected_parts: str, tmp_path: Path | None = None) -> PlanError:
    """The same PlanError from from_dict and, when tmp_path is given, from load of the file."""
    err = plan_error(data)
    assert_error(err, field, found, *expected_parts)
    if tmp_path is not None:
        path = tmp_path / "plan.json"
        path.write_text(json.dumps(data))
        with pytest.raises(PlanError) as info:
            SparsityPlan.load(path)
        assert_error(info.value, field, found, *expected_parts)
    return err


# round trip and queries -------------------------------------------------------------------------


def test_to_dict_layout():
    d = valid_dict()
    assert d["format"] == PLAN_FORMAT == "sparsevdit-plan"
    assert d["version"] == PLAN_VERSION == 1
    assert d["model"] == {"class_name": "WanTransformer3DModel", "num_layers": 4, "num_heads": 3, "head_dim": 64}
    assert d["layout"] == LAYOUT.to_dict()
    assert d["block_size"] == BLOCK
    assert d["layers"][1] == {
        "layer": 1,
        "step_start": 0,
        "step_end": 10,
        "heads": [{"pattern": "diagonal", "params": {"width": 8}}] * 2 + [{"pattern": "dense", "params": {}}],
    }
    assert d["metadata"] == {"source": "test", "threshold": 0.9}
    json.dumps(d)  # a JSON value


def test_save_load_roundtrip(tmp_path):
    plan = make_plan()
    path = plan.save(tmp_path / "plan.json")
    assert path == tmp_path / "plan.json"
    assert json.loads(path.read_text()) == plan.to_dict()
    loaded = SparsityPlan.load(path)
    assert loaded.to_dict() == plan.to_dict()
    assert loaded.model == MODEL and loaded.layout == LAYOUT and loaded.block_size == BLOCK
    assert loaded.entries == plan.entries
    assert loaded.metadata == plan.metadata
    # str paths work too, and a second round trip is stable
    path2 = loaded.save(str(tmp_path / "again.json"))
    assert SparsityPlan.load(str(path2)).to_dict() == plan.to_dict()
    assert path2.read_text() == path.read_text()


def test_save_creates_parent_directories(tmp_path):
    path = make_plan().save(tmp_path / "a" / "b" / "plan.json")
    assert path.is_file()
    assert SparsityPlan.load(path).to_dict() == make_plan().to_dict()


def test_load_with_matching_model_and_layout(tmp_path):
    path = make_plan().save(tmp_path / "plan.json")
    plan = SparsityPlan.load(path, model=MODEL, layout=LAYOUT)
    assert plan.to_dict() == make_plan().to_dict()
    SparsityPlan.load(path, model=MODEL)
    SparsityPlan.load(path, layout=LAYOUT)


def test_patterns_for_returns_cached_identical_objects(tmp_path):
    plan = SparsityPlan.load(make_plan().save(tmp_path / "plan.json"))
    pats = plan.patterns_for(0)
    assert [p.name for p in pats] == ["diagonal", "vertical_stripe", "diagonal"]
    assert pats[0] is pats[2]  # same spec, same object
    again = plan.patterns_for(0)
    assert all(a is b for a, b in zip(pats, again))
    # the same spec in another layer is the same object
    assert plan.patterns_for(1, step=3)[0] is pats[0]
    # and it is the pattern the registry builds
    expected = patterns.build("diagonal", LAYOUT, block_size=BLOCK, width=8)
    assert pats[0] == expected
    assert pats[0].layout == LAYOUT and pats[0].block_size == BLOCK


def test_entry_for_step_ranges():
    plan = make_plan()
    first, second = plan.entries[1], plan.entries[2]
    for step in (0, 1, 9):
        assert plan.entry_for(1, step) is first
    for step in (10, 11, 49, 10_000):
        assert plan.entry_for(1, step) is second
    assert plan.entry_for(1) is first  # default step 0
    assert [p.name for p in plan.patterns_for(1, 10)] == ["vertical_stripe", "skip", "dense"]
    # layer 3 only for steps [2, 5)
    assert plan.entry_for(3, 1) is None
    assert plan.entry_for(3, 2) is plan.entries[3]
    assert plan.entry_for(3, 4) is plan.entries[3]
    assert plan.entry_for(3, 5) is None
    assert plan.patterns_for(3, 5) is None
    # layer 2 has no entry at all: dense
    assert plan.entry_for(2, 0) is None
    assert plan.patterns_for(2) is None
    assert plan.density(2) == 1.0
    assert plan.density(3, 0) == 1.0


def test_density_is_mean_of_heads():
    plan = make_plan()
    pats = plan.patterns_for(1, 10)
    assert plan.density(1, 10) == pytest.approx(sum(p.density for p in pats) / 3)
    assert 0.0 < plan.density(1, 10) < 1.0


def test_patterns_for_layer_out_of_range():
    plan = make_plan()
    with pytest.raises(IndexError, match="4 layers"):
        plan.patterns_for(4)
    with pytest.raises(IndexError):
        plan.patterns_for(-1)


def test_layer_entry_covers():
    e = LayerEntry(0, (DENSE,), step_start=3, step_end=6)
    assert [s for s in range(10) if e.covers(s)] == [3, 4, 5]
    open_ended = LayerEntry(0, (DENSE,), step_start=3)
    assert not open_ended.covers(2) and open_ended.covers(3) and open_ended.covers(10**9)


def test_uniform():
    plan = SparsityPlan.uniform(MODEL, LAYOUT, "diagonal", {"width": 4}, block_size=16)
    assert plan.block_size == 16
    assert len(plan.entries) == MODEL.num_layers
    for layer in range(MODEL.num_layers):
        entry = plan.entry_for(layer, 123)
        assert entry is not None and entry.layer == layer
        assert entry.heads == (HeadSpec("diagonal", {"width": 4}),) * MODEL.num_heads
    with pytest.raises(PlanError) as info:
        SparsityPlan.uniform(MODEL, LAYOUT, "nope")
    assert info.value.field == "layers[0].heads[0].pattern"


def test_constructor_validates():
    with pytest.raises(PlanError) as info:
        SparsityPlan(MODEL, LAYOUT, BLOCK, [LayerEntry(7, (DENSE,) * 3)])
    assert info.value.field == "layers[0].layer" and info.value.found == 7
    with pytest.raises(PlanError) as info:
        SparsityPlan(MODEL, LAYOUT, BLOCK, [LayerEntry(0, (DENSE,) * 2)])
    assert info.value.field == "layers[0].heads" and info.value.found == 2


@st.composite
def random_plans(draw) -> SparsityPlan:
    frames, height, width = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    position = draw(st.sampled_from(["none", "prefix", "suffix"]))
    text = 0 if position == "none" else draw(st.integers(0, 10))
    layout = TokenLayout(frames, height, width, text, position)
    num_layers, num_heads = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    model = ModelSignature(draw(st.sampled_from(["A", "Wan", "HunyuanVideo"])), num_layers, num_heads, 64)
    specs = st.sampled_from(
        [
            HeadSpec("dense"),
            HeadSpec("skip"),
            HeadSpec("diagonal", {"width": 4}),
            HeadSpec("multi_diagonal", {}),
            HeadSpec("vertical_stripe", {"sink_frames": 1}),
            HeadSpec("union", {"patterns": ["diagonal", {"name": "vertical_stripe", "params": {"sink_frames": 1}}]}),
        ]
    )
    entries = []
    for layer in range(num_layers):
        # disjoint step ranges: cut points split [0, inf)
        cuts = sorted(set(draw(st.lists(st.integers(1, 50), max_size=2))))
        bounds = [0, *cuts, None]
        for start, end in zip(bounds[:-1], bounds[1:]):
            if draw(st.booleans()):
                heads = tuple(draw(specs) for _ in range(num_heads))
                entries.append(LayerEntry(layer, heads, start, end))
    metadata = draw(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3))
    return SparsityPlan(model, layout, draw(st.sampled_from([4, 8, 128])), entries, metadata)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(random_plans())
def test_random_plans_roundtrip(tmp_path, plan):
    path = plan.save(tmp_path / "plan.json")
    loaded = SparsityPlan.load(path, model=plan.model, layout=plan.layout)
    assert loaded.to_dict() == plan.to_dict()
    for entry in plan.entries:
        for step in (entry.step_start, (entry.step_end or 1000) - 1):
            assert loaded.entry_for(entry.layer, step) == entry
    assert os.listdir(tmp_path) == ["plan.json"]


# atomic save ------------------------------------------------------------------------------------


def test_save_leaves_no_temp_files(tmp_path):
    plan = make_plan()
    plan.save(tmp_path / "plan.json")
    plan.save(tmp_path / "plan.json")  # overwrite
    assert os.listdir(tmp_path) == ["plan.json"]


def test_failed_dump_leaves_existing_file_untouched(tmp_path):
    path = make_plan().save(tmp_path / "plan.json")
    before = path.read_bytes()
    bad = make_plan()
    bad.metadata = {"source": "test", "callback": object()}  # not JSON-serialisable (set after validation)
    with pytest.raises(PlanError) as info:
        bad.save(path)
    assert info.value.field == "metadata.callback"
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["plan.json"]
    assert SparsityPlan.load(path).to_dict() == make_plan().to_dict()


def test_failed_dump_creates_no_file(tmp_path):
    bad = make_plan()
    bad.metadata = {"x": {1, 2}}
    with pytest.raises(PlanError):
        bad.save(tmp_path / "plan.json")
    assert os.listdir(tmp_path) == []


def test_failed_replace_leaves_existing_file_untouched(tmp_path, monkeypatch):
    path = make_plan().save(tmp_path / "plan.json")
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        make_plan(metadata={"other": 1}).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["plan.json"]


def test_interrupted_save_cleans_up(tmp_path, monkeypatch):
    path = make_plan().save(tmp_path / "plan.json")
    before = path.read_bytes()
    real_write = Path.write_text

    def interrupted(self, text, *args, **kwargs):
        real_write(self, text[:30], *args, **kwargs)  # half the file, then SIGINT
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_plan().save(path)
    monkeypatch.setattr(Path, "write_text", real_write)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["plan.json"]


# PlanError paths --------------------------------------------------------------------------------


def test_error_not_json(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("{not json")
    with pytest.raises(PlanError) as info:
        SparsityPlan.load(path)
    err = info.value
    assert err.field == "<file>"
    assert isinstance(err.found, str) and err.found.startswith("invalid JSON at line 1 column")
    assert_error(err, "<file>", err.found, "JSON")


def test_error_empty_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("")
    with pytest.raises(PlanError) as info:
        SparsityPlan.load(path)
    assert info.value.field == "<file>" and "invalid JSON" in info.value.found


def test_error_missing_file(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(PlanError) as info:
        SparsityPlan.load(path)
    assert_error(info.value, "<file>", str(path), "readable plan file")


def test_error_directory(tmp_path):
    with pytest.raises(PlanError) as info:
        SparsityPlan.load(tmp_path)
    assert info.value.field == "<file>"


@pytest.mark.parametrize("data, found", [([1, 2], "list"), ("plan", "str"), (3, "int"), (None, "NoneType")])
def test_error_not_an_object(tmp_path, data, found):
    check(data, "<top>", found, "JSON object", tmp_path=tmp_path)


@pytest.mark.parametrize("fmt", ["other-plan", None, 1, "SPARSEVDIT-PLAN"])
def test_error_wrong_format(tmp_path, fmt):
    data = valid_dict()
    data["format"] = fmt
    check(data, "format", fmt, "sparsevdit-plan", tmp_path=tmp_path)
    del data["format"]
    check(data, "format", None, "sparsevdit-plan")


@pytest.mark.parametrize("version", [2, 99, 0, -1, "1", None, True, 1.0, [1]])
def test_error_wrong_or_future_version(tmp_path, version):
    data = valid_dict()
    data["version"] = version
    check(data, "version", version, "1", "version", tmp_path=tmp_path)


def test_error_missing_version():
    data = valid_dict()
    del data["version"]
    check(data, "version", None, "1")


def test_error_missing_model():
    data = valid_dict()
    del data["model"]
    check(data, "model", None, "class_name", "num_layers", "num_heads", "head_dim")


@pytest.mark.parametrize("model", [5, "Wan", [1, 2], None])
def test_error_model_not_an_object(tmp_path, model):
    data = valid_dict()
    data["model"] = model
    check(data, "model", model, "class_name", "num_heads", tmp_path=tmp_path)


@pytest.mark.parametrize("key", ["class_name", "num_layers", "num_heads", "head_dim"])
def test_error_missing_model_field(tmp_path, key):
    data = valid_dict()
    del data["model"][key]
    check(data, f"model.{key}", None, tmp_path=tmp_path)


@pytest.mark.parametrize(
    "key, value",
    [
        ("class_name", ""),
        ("class_name", 5),
        ("class_name", None),
        ("num_layers", 0),
        ("num_layers", -4),
        ("num_layers", "4"),
        ("num_layers", 4.0),
        ("num_layers", True),
        ("num_heads", 0),
        ("num_heads", [3]),
        ("head_dim", -64),
        ("head_dim", None),
    ],
)
def test_error_invalid_model_field(tmp_path, key, value):
    data = valid_dict()
    data["model"][key] = value
    expected = "class name" if key == "class_name" else "positive integer"
    check(data, f"model.{key}", value, expected, tmp_path=tmp_path)


def test_error_missing_layout():
    data = valid_dict()
    del data["layout"]
    check(data, "layout", None, "frames", "text_position")


@pytest.mark.parametrize("layout", [[3, 2, 4], "3x2x4", 7])
def test_error_layout_not_an_object(layout):
    data = valid_dict()
    data["layout"] = layout
    check(data, "layout", layout, "frames", "height", "width")


@pytest.mark.parametrize(
    "key, value",
    [
        ("frames", 0),
        ("frames", "3"),
        ("height", -2),
        ("width", 2.5),
        ("width", True),
        ("text_tokens", -5),
        ("text_position", "middle"),
        ("text_position", None),
    ],
)
def test_error_bad_layout_field(tmp_path, key, value):
    data = valid_dict()
    data["layout"][key] = value
    err = check(data, f"layout.{key}", value, "valid value", tmp_path=tmp_path)
    assert repr(value) in str(err)


def test_error_layout_text_without_position():
    data = valid_dict()
    data["layout"]["text_position"] = "none"
    check(data, "layout.text_tokens", data["layout"]["text_tokens"], "text_position")


@pytest.mark.parametrize("key", ["height", "text_tokens", "text_position"])
def test_error_layout_missing_field(key):
    data = valid_dict()
    del data["layout"][key]
    check(data, f"layout.{key}", None, "frames", "height", "text_position")


def test_error_unknown_layout_key(tmp_path):
    data = valid_dict()
    data["layout"]["patch_size"] = 2
    check(data, "layout.patch_size", 2, "no such field", "frames", "text_position", tmp_path=tmp_path)


@pytest.mark.parametrize("block_size", [0, -128, "128", 12.5, True, None, [128]])
def test_error_bad_block_size(tmp_path, block_size):
    data = valid_dict()
    data["block_size"] = block_size
    check(data, "block_size", block_size, "positive integer", tmp_path=tmp_path)


def test_error_missing_block_size():
    data = valid_dict()
    del data["block_size"]
    check(data, "block_size", None, "positive integer")


@pytest.mark.parametrize("layers, found", [({"0": []}, "dict"), ("all", "str"), (3, "int")])
def test_error_layers_not_a_list(tmp_path, layers, found):
    data = valid_dict()
    data["layers"] = layers
    check(data, "layers", found, "list of layer entries", tmp_path=tmp_path)


def test_error_missing_layers():
    data = valid_dict()
    del data["layers"]
    check(data, "layers", None, "list")


def test_empty_layers_is_all_dense():
    data = valid_dict()
    data["layers"] = []
    plan = SparsityPlan.from_dict(data)
    assert all(plan.patterns_for(i) is None for i in range(MODEL.num_layers))


@pytest.mark.parametrize("raw", [5, "layer 0", [0], None])
def test_error_layer_entry_not_an_object(raw):
    data = valid_dict()
    data["layers"][2] = raw
    check(data, "layers[2]", raw, "layer", "heads")


@pytest.mark.parametrize("layer", [4, 100, -1, "0", 1.0, True, None])
def test_error_layer_index_out_of_range(tmp_path, layer):
    data = valid_dict()
    data["layers"][1]["layer"] = layer
    check(data, "layers[1].layer", layer, "0..3", tmp_path=tmp_path)


def test_error_missing_layer_index():
    data = valid_dict()
    del data["layers"][0]["layer"]
    check(data, "layers[0].layer", None, "0..3")


@pytest.mark.parametrize("count", [0, 2, 4])
def test_error_wrong_number_of_heads(tmp_path, count):
    data = valid_dict()
    data["layers"][0]["heads"] = [{"pattern": "dense", "params": {}}] * count
    check(data, "layers[0].heads", count, "3", "num_heads", tmp_path=tmp_path)


@pytest.mark.parametrize("heads", ["dense", {"pattern": "dense"}, None])
def test_error_heads_not_a_list(heads):
    data = valid_dict()
    data["layers"][0]["heads"] = heads
    check(data, "layers[0].heads", heads, "3")


def test_error_missing_heads():
    data = valid_dict()
    del data["layers"][3]["heads"]
    check(data, "layers[3].heads", None, "3")


@pytest.mark.parametrize("head", ["diagonal", 3, None, ["diagonal"]])
def test_error_head_not_an_object(head):
    data = valid_dict()
    data["layers"][0]["heads"][1] = head
    check(data, "layers[0].heads[1]", head, "pattern", "params")


@pytest.mark.parametrize("name", ["diagonl", "", None, 5, "DENSE"])
def test_error_unknown_pattern_lists_available(tmp_path, name):
    data = valid_dict()
    data["layers"][0]["heads"][1]["pattern"] = name
    check(
        data, "layers[0].heads[1].pattern", name,
        "dense", "skip", "diagonal", "multi_diagonal", "vertical_stripe", "union",
        tmp_path=tmp_path,
    )


def test_error_missing_pattern_name():
    data = valid_dict()
    del data["layers"][0]["heads"][1]["pattern"]
    check(data, "layers[0].heads[1].pattern", None, "diagonal")


def test_missing_params_means_defaults():
    data = valid_dict()
    del data["layers"][0]["heads"][1]["params"]
    data["layers"][0]["heads"][1]["pattern"] = "diagonal"
    plan = SparsityPlan.from_dict(data)
    assert plan.patterns_for(0)[1] == patterns.build("diagonal", LAYOUT, block_size=BLOCK)


@pytest.mark.parametrize("params", [[1], "width=8", 8, None])
def test_error_params_not_an_object(params):
    data = valid_dict()
    data["layers"][0]["heads"][0]["params"] = params
    check(data, "layers[0].heads[0].params", params, "object")


@pytest.mark.parametrize(
    "pattern, params, parts",
    [
        ("diagonal", {"width": 0}, ["diagonal", "width"]),
        ("diagonal", {"width": "wide"}, ["width"]),
        ("diagonal", {"radius": 3}, ["radius", "width", "text_rows", "text_cols"]),
        ("vertical_stripe", {"sink_frames": -1}, ["sink_frames"]),
        ("vertical_stripe", {"blocks": [99]}, ["blocks"]),
        ("vertical_stripe", {"blocks": 3}, ["blocks"]),
        ("union", {"patterns": []}, ["union"]),
        ("union", {"patterns": ["diagonal", "multi_diagonal"]}, ["orderings"]),
        ("union", {"patterns": [{"name": "diagonal", "params": [8]}]}, ["params"]),
        ("union", {"patterns": 5}, ["patterns"]),
        ("dense", {"width": 8}, ["width"]),
    ],
)
def test_error_bad_params(tmp_path, pattern, params, parts):
    data = valid_dict()
    data["layers"][2]["heads"][2] = {"pattern": pattern, "params": params}
    check(data, "layers[2].heads[2].params", params, f"{pattern!r}", *parts, tmp_path=tmp_path)


def test_vertical_stripe_no_keys_in_plan():
    # a layout without text: sink_frames=0 keeps no key
    data = valid_dict()
    data["layout"] = TokenLayout(3, 2, 4).to_dict()
    params = {"sink_frames": 0}
    data["layers"][0]["heads"][1] = {"pattern": "vertical_stripe", "params": params}
    check(data, "layers[0].heads[1].params", params, "keeps no key")


@pytest.mark.parametrize("start", [-1, "0", 1.5, None, True])
def test_error_bad_step_start(start):
    data = valid_dict()
    data["layers"][0]["step_start"] = start
    check(data, "layers[0].step_start", start, ">= 0")


@pytest.mark.parametrize("start, end", [(5, 5), (5, 3), (0, 0), (0, -1), (0, "10"), (0, 2.0), (0, True)])
def test_error_step_end_not_after_start(tmp_path, start, end):
    data = valid_dict()
    data["layers"][3]["step_start"] = start
    data["layers"][3]["step_end"] = end
    check(data, "layers[3].step_end", end, "step_start", f"({start})", tmp_path=tmp_path)


def test_missing_step_fields_default_to_whole_run():
    data = valid_dict()
    del data["layers"][0]["step_start"]
    del data["layers"][0]["step_end"]
    plan = SparsityPlan.from_dict(data)
    assert plan.entries[0].step_start == 0 and plan.entries[0].step_end is None


@pytest.mark.parametrize(
    "first, second, found, text",
    [
        ((0, 10), (5, None), 5, "[0, 10)"),
        ((0, 10), (9, 12), 9, "[0, 10)"),
        ((5, None), (0, 6), 0, "[5, None)"),
        ((0, None), (100, 101), 100, "[0, None)"),
        ((3, 4), (3, 4), 3, "[3, 4)"),
    ],
)
def test_error_overlapping_step_ranges(tmp_path, first, second, found, text):
    data = valid_dict()
    data["layers"][1]["step_start"], data["layers"][1]["step_end"] = first
    data["layers"][2]["step_start"], data["layers"][2]["step_end"] = second
    check(data, "layers[2].step_start", found, "overlapping", "layer 1", text, tmp_path=tmp_path)


def test_adjacent_step_ranges_and_other_layers_do_not_overlap():
    data = valid_dict()
    data["layers"][1]["step_start"], data["layers"][1]["step_end"] = 0, 10
    data["layers"][2]["step_start"], data["layers"][2]["step_end"] = 10, None
    data["layers"][3]["layer"] = 1
    data["layers"][3]["step_start"], data["layers"][3]["step_end"] = 10, 20
    check(data, "layers[3].step_start", 10, "layer 1")
    data["layers"][3]["layer"] = 2  # same range in another layer is fine
    SparsityPlan.from_dict(data)


@pytest.mark.parametrize("metadata", [[1], "note", 3, None])
def test_error_bad_metadata(tmp_path, metadata):
    data = valid_dict()
    data["metadata"] = metadata
    check(data, "metadata", metadata, "object", tmp_path=tmp_path)


def test_missing_metadata_is_empty():
    data = valid_dict()
    del data["metadata"]
    assert SparsityPlan.from_dict(data).metadata == {}


def test_first_error_wins_in_file_order():
    data = valid_dict()
    data["version"] = 2
    data["block_size"] = 0
    assert plan_error(data).field == "version"


# model / layout mismatch ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "other, field, found, expected",
    [
        (ModelSignature("WanTransformer3DModel", 4, 4, 64), "model.num_heads", 3, "4"),
        (ModelSignature("WanTransformer3DModel", 30, 3, 64), "model.num_layers", 4, "30"),
        (ModelSignature("WanTransformer3DModel", 4, 3, 128), "model.head_dim", 64, "128"),
        (ModelSignature("HunyuanVideoTransformer3DModel", 4, 3, 64), "model.class_name", "WanTransformer3DModel", "'HunyuanVideoTransformer3DModel'"),
    ],
)
def test_load_for_another_model(tmp_path, other, field, found, expected):
    path = make_plan().save(tmp_path / "plan.json")
    with pytest.raises(PlanError) as info:
        SparsityPlan.load(path, model=other)
    assert_error(info.value, field, found, expected, "applied to")
    with pytest.raises(PlanError) as info:
        make_plan().check_model(other)
    assert_error(info.value, field, found, expected)


@pytest.mark.parametrize(
    "other, field, found, expected",
    [
        (TokenLayout(5, 2, 4, 5, "prefix"), "layout.frames", 3, "5"),
        (TokenLayout(3, 3, 4, 5, "prefix"), "layout.height", 2, "3"),
        (TokenLayout(3, 2, 6, 5, "prefix"), "layout.width", 4, "6"),
        (TokenLayout(3, 2, 4, 7, "prefix"), "layout.text_tokens", 5, "7"),
        (TokenLayout(3, 2, 4, 5, "suffix"), "layout.text_position", "prefix", "'suffix'"),
    ],
)
def test_load_for_another_layout(tmp_path, other, field, found, expected):
    path = make_plan().save(tmp_path / "plan.json")
    with pytest.raises(PlanError) as info:
        SparsityPlan.load(path, layout=other)
    assert_error(info.value, field, found, expected, "layout")
    with pytest.raises(PlanError) as info:
        SparsityPlan.load(path, model=MODEL, layout=other)
    assert_error(info.value, field, found, expected)
    with pytest.raises(PlanError) as info:
        make_plan().check_model(MODEL, other)
    assert info.value.field == field


def test_model_checked_before_layout(tmp_path):
    path = make_plan().save(tmp_path / "plan.json")
    with pytest.raises(PlanError) as info:
        SparsityPlan.load(path, model=ModelSignature("X", 4, 3, 64), layout=TokenLayout(1, 1, 1))
    assert info.value.field == "model.class_name"


def test_plan_error_attributes():
    err = PlanError("model.num_heads", 3, "4")
    assert (err.field, err.found, err.expected) == ("model.num_heads", 3, "4")
    assert str(err) == "plan field 'model.num_heads': found 3, expected 4"


def test_valid_dict_not_mutated_by_from_dict():
    data = valid_dict()
    snapshot = copy.deepcopy(data)
    SparsityPlan.from_dict(data)
    assert data == snapshot
