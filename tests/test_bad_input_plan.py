"""Hostile plan files (issue 14): every malformed plan is a PlanError naming the problem, never another
exception and never a plan that silently differs from the file."""

from __future__ import annotations

import copy
import json
import math
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsevdit import strict_json
from sparsevdit.layout import TokenLayout
from sparsevdit.plan import (
    HEAD_FIELDS, LAYER_FIELDS, LAYOUT_FIELDS, MAX_BLOCKS, MODEL_FIELDS, TOP_FIELDS, HeadSpec, LayerEntry,
    ModelSignature, PlanError, SparsityPlan,
)

MODEL = ModelSignature("WanTransformer3DModel", num_layers=3, num_heads=2, head_dim=64)
LAYOUT = TokenLayout(2, 2, 4, 3, "prefix")  # 19 tokens
BLOCK = 4
UNION = HeadSpec("union", {"patterns": ["diagonal", {"name": "vertical_stripe", "params": {"sink_frames": 1}}]})


def make_plan() -> SparsityPlan:
    entries = [
        LayerEntry(0, (HeadSpec("diagonal", {"width": 8}), HeadSpec("random_blocks", {"density": 0.5, "seed": 3}))),
        LayerEntry(1, (UNION, HeadSpec("dense")), step_start=0, step_end=4),
        LayerEntry(1, (HeadSpec("skip"), HeadSpec("multi_diagonal", {"width": 6})), step_start=4),
    ]
    return SparsityPlan(MODEL, LAYOUT, BLOCK, entries, {"source": "test", "score": 0.5, "list": [1, {"a": None}]})


def valid() -> dict:
    return make_plan().to_dict()


def refused(data) -> PlanError:
    with pytest.raises(PlanError) as info:
        SparsityPlan.from_dict(data)
    return info.value


def refused_file(tmp_path: Path, content: bytes | str) -> PlanError:
    path = tmp_path / "plan.json"
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    with pytest.raises(PlanError) as info:
        SparsityPlan.load(path)
    return info.value


def in_message(err: PlanError, *parts: str) -> None:
    for part in parts:
        assert part in str(err), (part, str(err))


# unknown keys at every level --------------------------------------------------------------------


def _head(d: dict) -> dict:
    return d["layers"][0]["heads"][0]


@pytest.mark.parametrize(
    "where, get, key, field, allowed",
    [
        ("top", lambda d: d, "layer", "layer", TOP_FIELDS),
        ("model", lambda d: d["model"], "num_layer", "model.num_layer", MODEL_FIELDS),
        ("layout", lambda d: d["layout"], "patch_size", "layout.patch_size", LAYOUT_FIELDS),
        ("layer", lambda d: d["layers"][2], "step_stop", "layers[2].step_stop", LAYER_FIELDS),
        ("head", _head, "param", "layers[0].heads[0].param", HEAD_FIELDS),
    ],
)
def test_unknown_key_is_refused_and_named(tmp_path, where, get, key, field, allowed):
    data = valid()
    get(data)[key] = 7
    err = refused(data)
    assert err.field == field and err.found == 7
    in_message(err, key, "no such field", *allowed)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError) as info:
        SparsityPlan.load(path)
    assert info.value.field == field


def test_head_with_param_for_params_is_refused_not_defaulted():
    data = valid()
    head = _head(data)
    head["param"] = head.pop("params")  # the typo would have built diagonal with its default width
    err = refused(data)
    assert err.field == "layers[0].heads[0].param"


def test_unknown_pattern_parameter_names_the_valid_ones():
    data = valid()
    _head(data)["params"] = {"widht": 8}
    err = refused(data)
    assert err.field == "layers[0].heads[0].params"
    in_message(err, "widht", "width", "text_rows", "text_cols")


@pytest.mark.parametrize(
    "part, words",
    [
        ({"name": "diagonal", "param": {"width": 8}}, ["param", "name, params"]),
        ({"name": "diagonal", "params": {"widht": 8}}, ["widht", "width"]),
        ({"nam": "diagonal"}, ["union", "name"]),
        ({"name": ["diagonal"]}, ["union", "name"]),
        ({"name": "union", "params": {"patterns": ["dense"]}}, ["nest no union"]),
        ({"name": "diagonal", "params": {"width": 8.0}}, ["width"]),
        ({"name": "nope"}, ["nope", "available"]),
        (7, ["union"]),
    ],
)
def test_bad_union_part(part, words):
    data = valid()
    data["layers"][1]["heads"][0]["params"] = {"patterns": ["diagonal", part]}
    err = refused(data)
    assert err.field == "layers[1].heads[0].params"
    in_message(err, *words)


def test_metadata_is_free_form_but_json():
    data = valid()
    data["metadata"] = {"anything": {"goes": [1, "two", None, True, 2.5]}}
    assert SparsityPlan.from_dict(data).metadata == data["metadata"]


# numbers: seeds, widths, floats and bools for integers, extremes ---------------------------------


@pytest.mark.parametrize("seed", [-1, 2**63, 10**40, 1e40, 0.5, 3.0, "3", True, None, [3]])
def test_bad_random_blocks_seed(seed):
    data = valid()
    data["layers"][0]["heads"][1]["params"]["seed"] = seed
    err = refused(data)
    assert err.field == "layers[0].heads[1].params"
    in_message(err, "seed", repr(seed))


@pytest.mark.parametrize("density", [0, -0.5, 1.5, math.nan, math.inf, "0.5", True, None])
def test_bad_random_blocks_density(density):
    data = valid()
    data["layers"][0]["heads"][1]["params"]["density"] = density
    err = refused(data)
    assert err.field.startswith("layers[0].heads[1].params")
    assert "density" in str(err) or "finite" in str(err)


@pytest.mark.parametrize("width", [1e40, 10**40, 2**31 + 1, 8.0, 0, -8, True, "8", [8], math.inf])
@pytest.mark.parametrize("pattern", ["diagonal", "multi_diagonal"])
def test_bad_band_width(pattern, width):
    data = valid()
    _head(data).update(pattern=pattern, params={"width": width})
    err = refused(data)
    assert err.field.startswith("layers[0].heads[0].params")
    assert "width" in str(err) or "finite" in str(err)


def test_widest_band_is_dense():
    data = valid()
    _head(data)["params"] = {"width": 2**31}
    assert SparsityPlan.from_dict(data).patterns_for(0)[0].is_dense


@pytest.mark.parametrize(
    "path, value",
    [
        (("block_size",), 4.0),
        (("block_size",), True),
        (("layers", 0, "layer"), 0.0),
        (("layers", 0, "layer"), False),
        (("layers", 2, "step_start"), 4.0),
        (("layers", 1, "step_end"), 4.0),
        (("model", "num_heads"), 2.0),
        (("model", "num_heads"), True),
        (("layout", "frames"), 2.0),
        (("layout", "text_tokens"), 3.0),
    ],
)
def test_floats_and_bools_for_integers(path, value):
    data = valid()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    err = refused(data)
    assert err.found == value and type(err.found) is type(value)


@pytest.mark.parametrize(
    "params, word",
    [({"sink_frames": 1.0}, "sink_frames"), ({"sink_frames": True}, "sink_frames"), ({"text_rows": 1}, "text_rows"),
     ({"blocks": [1.0]}, "blocks"), ({"blocks": [True]}, "blocks"), ({"ordering": 3}, "ordering")],
)
def test_pattern_parameter_types(params, word):
    data = valid()
    _head(data).update(pattern="vertical_stripe", params=params)
    err = refused(data)
    in_message(err, word)


@pytest.mark.parametrize("key", ["num_layers", "num_heads", "head_dim"])
def test_absurd_model_sizes(key):
    data = valid()
    data["model"][key] = 10**40
    err = refused(data)
    assert err.field == f"model.{key}"
    in_message(err, "at most")


def test_layout_beyond_int32_tokens():
    data = valid()
    data["layout"] = {"frames": 10**40, "height": 100, "width": 100, "text_tokens": 0, "text_position": "none"}
    err = refused(data)
    assert err.field.startswith("layout")
    in_message(err, "2,147,483,647")


@pytest.mark.parametrize("frames, block_size", [(10**5, 128), (10**4, 4), (2, 1)])
def test_absurd_layout_sizes(frames, block_size):
    data = valid()
    data["layout"] = TokenLayout(frames, 100, 100).to_dict()
    data["block_size"] = block_size
    data["layers"] = []
    err = refused(data)
    assert err.field == "block_size"
    in_message(err, str(MAX_BLOCKS), "blocks")


def test_huge_block_size():
    data = valid()
    data["layers"] = data["layers"][:1]
    data["block_size"] = 2**24
    assert SparsityPlan.from_dict(data).patterns_for(0)[0].num_q_blocks == 1  # one block
    data["block_size"] = 10**40
    err = refused(data)
    assert err.field == "block_size"
    in_message(err, "at most")


@pytest.mark.parametrize("value", [10**40, 2**63])
def test_huge_step_numbers_are_integers_not_errors(value):
    data = valid()
    data["layers"][2]["step_start"] = value
    assert SparsityPlan.from_dict(data).entries[2].step_start == value


# the file itself ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "replace, token",
    [('"score": 0.5', '"score": NaN'), ('"score": 0.5', '"score": Infinity'), ('"score": 0.5', '"score": -Infinity'),
     ('"width": 8', '"width": NaN'), ('"score": 0.5', '"score": 1e400')],
)
def test_nan_and_infinity_tokens_are_refused(tmp_path, replace, token):
    text = json.dumps(valid())
    assert replace in text
    err = refused_file(tmp_path, text.replace(replace, token, 1))
    assert err.field == "<file>"
    in_message(err, "NaN or infinity" if "NaN" in token or "Infinity" in token else "infinity")


def test_repeated_key_is_refused(tmp_path):
    text = json.dumps(valid()).replace('"block_size": 4', '"block_size": 4, "block_size": 8', 1)
    err = refused_file(tmp_path, text)
    in_message(err, "block_size", "twice")


@pytest.mark.parametrize(
    "content, word",
    [
        (b"\xff\xfe{\x00}\x00", "UTF-8"),
        ('{"format": "sparsevdit-plan", "metadata": {"note": "caf\u00e9"}}'.encode("latin-1"), "UTF-8"),
        (b"\x80\x81\x82", "UTF-8"),
    ],
)
def test_non_utf8_file(tmp_path, content, word):
    err = refused_file(tmp_path, content)
    assert err.field == "<file>"
    in_message(err, word, "offset")


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "plan.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(valid()).encode())
    assert SparsityPlan.load(path).to_dict() == valid()


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deep_nesting(tmp_path, depth):
    text = json.dumps(valid()).replace('"source": "test"', '"source": ' + "[" * depth + "]" * depth, 1)
    err = refused_file(tmp_path, text)
    in_message(err, "nested deeper")


def test_deep_nesting_in_python_data(tmp_path):
    data = valid()
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    data["metadata"] = {"deep": deep}
    err = refused(data)  # checked without recursion: no RecursionError
    assert err.field.startswith("metadata.deep")
    in_message(err, "nested")
    plan = make_plan()
    plan.metadata = {"deep": deep}
    with pytest.raises(PlanError):
        plan.save(tmp_path / "plan.json")
    assert os.listdir(tmp_path) == []


def test_plan_shares_no_mutable_data_with_its_caller():
    data = valid()
    plan = SparsityPlan.from_dict(data)
    before = plan.to_dict()
    data["layers"][0]["heads"][0]["params"]["width"] = 10**6  # a later change to the input...
    data["metadata"]["source"] = "changed"
    plan.to_dict()["layers"][0]["heads"][0]["params"]["width"] = 3  # ...or to an output
    assert plan.to_dict() == before  # ...does not change the plan


def test_huge_integer_token(tmp_path):
    text = json.dumps(valid()).replace('"width": 8', '"width": ' + "9" * 5000, 1)
    err = refused_file(tmp_path, text)
    assert err.field == "<file>"
    in_message(err, "digits")


def test_huge_file(tmp_path):
    path = tmp_path / "plan.json"
    with open(path, "wb") as f:
        f.write(json.dumps(valid()).encode())
        f.truncate(strict_json.MAX_BYTES + 1)  # sparse: zeros past the end
    with pytest.raises(PlanError) as info:
        SparsityPlan.load(path)
    in_message(info.value, "larger than", "MiB")


def test_long_values_are_cut_in_the_message():
    data = valid()
    data["layers"][0]["heads"][0]["pattern"] = "x" * 100_000
    err = refused(data)
    assert err.found == "x" * 100_000 and len(str(err)) < 1000 and "100002 characters" in str(err)


def test_truncated_file(tmp_path):
    text = json.dumps(valid())
    for cut in (0, 1, len(text) // 3, len(text) - 1):
        err = refused_file(tmp_path, text[:cut])
        assert err.field == "<file>"
        in_message(err, "invalid JSON")


# saving -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, object(), {1, 2}, b"x"])
def test_save_refuses_what_json_cannot_hold(tmp_path, bad):
    plan = make_plan()
    plan.metadata = {"ok": 1, "nested": {"value": [0, bad]}}  # set after validation, as searches do
    with pytest.raises(PlanError) as info:
        plan.save(tmp_path / "plan.json")
    assert info.value.field == "metadata.nested.value[1]"
    assert not (tmp_path / "plan.json").exists() and os.listdir(tmp_path) == []


def test_constructor_refuses_nan_metadata():
    with pytest.raises(PlanError) as info:
        SparsityPlan(MODEL, LAYOUT, BLOCK, [], {"psnr": math.inf})
    assert info.value.field == "metadata.psnr"


def test_saved_plan_is_an_ordinary_file(tmp_path):
    old = os.umask(0o022)
    try:
        path = make_plan().save(tmp_path / "plan.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert "NaN" not in path.read_text()
    assert SparsityPlan.load(path).to_dict() == valid()


# random malformations ---------------------------------------------------------------------------
#
# A load either raises PlanError or returns a plan that is itself valid and says what the file says
# (its to_dict equals the file's data once defaults are filled in); never another exception.

SETTINGS = settings(max_examples=int(os.environ.get("PLAN_FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([10**40, -(10**40), 2**63, 2**31 + 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.lists(st.integers(0, 4), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.sampled_from(["diagonal", "union", "random_blocks", "frame_major", "prefix", "params", "patterns"]),
)


def _containers(value, path=()):
    """Every (path, container) of a parsed plan, the top level included."""
    yield path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        if isinstance(v, (dict, list)):
            yield from _containers(v, (*path, k))


def _normalised(data: dict) -> dict:
    """What a plan file means with its defaults written out (missing params, step ranges, metadata)."""
    out = copy.deepcopy(data)
    out.setdefault("metadata", {})
    for entry in out.get("layers", []):
        entry.setdefault("step_start", 0)
        entry.setdefault("step_end", None)
        for head in entry.get("heads", []):
            head.setdefault("params", {})
    return out


@st.composite
def malformed(draw) -> dict:
    data = valid()
    for _ in range(draw(st.integers(1, 3))):
        places = list(_containers(data))
        path, container = draw(st.sampled_from(places))
        keys = list(container) if isinstance(container, dict) else list(range(len(container)))
        action = draw(st.sampled_from(["delete", "insert", "rename", "swap", "nest"]))
        if action == "insert" or not keys:
            if isinstance(container, dict):
                container[draw(st.sampled_from([*TOP_FIELDS, *LAYER_FIELDS, *HEAD_FIELDS, "param", "x", "name"]))] = draw(ODD_VALUES)
            else:
                container.append(draw(ODD_VALUES))
            continue
        key = draw(st.sampled_from(keys))
        if action == "delete":
            del container[key]
        elif action == "rename" and isinstance(container, dict):
            container[draw(st.text(min_size=1, max_size=8))] = container.pop(key)
        elif action == "nest":
            container[key] = [container[key]] if draw(st.booleans()) else {"value": container[key]}
        else:
            container[key] = draw(ODD_VALUES)
    return data


def _load_or_refuse(path: Path, data) -> None:
    try:
        plan = SparsityPlan.load(path)
    except PlanError as exc:
        assert str(exc)
        return
    # accepted: the file was (still) a valid plan, and the plan says exactly what it says
    assert plan.to_dict() == _normalised(data)
    SparsityPlan.from_dict(plan.to_dict())


@SETTINGS
@given(malformed())
def test_random_malformations_are_plan_errors(tmp_path, data):
    path = tmp_path / "plan.json"
    try:
        text = json.dumps(data, allow_nan=True)
    except ValueError:
        return
    path.write_text(text)
    _load_or_refuse(path, json.loads(text))
    # from_dict on the same Python data (which may hold NaN, tuples of nothing else) also only refuses
    try:
        SparsityPlan.from_dict(data)
    except PlanError:
        pass


@SETTINGS
@given(st.data())
def test_random_bytes_and_truncations_are_plan_errors(tmp_path, d):
    raw = json.dumps(valid(), indent=1).encode()
    kind = d.draw(st.sampled_from(["truncate", "flip", "insert", "random"]))
    if kind == "truncate":
        raw = raw[: d.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        i = d.draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([d.draw(st.integers(0, 255))]) + raw[i + 1:]
    elif kind == "insert":
        i = d.draw(st.integers(0, len(raw)))
        raw = raw[:i] + d.draw(st.binary(min_size=1, max_size=8)) + raw[i:]
    else:
        raw = d.draw(st.binary(max_size=200))
    path = tmp_path / "plan.json"
    path.write_bytes(raw)
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        parsed = None
    if parsed is None:
        with pytest.raises(PlanError):
            SparsityPlan.load(path)
    else:
        _load_or_refuse(path, parsed)


# the same checks at the pattern level (PatternError), where the Python API meets them ------------


@pytest.mark.parametrize(
    "name, params, word",
    [("random_blocks", {"seed": -1}, "seed"), ("random_blocks", {"seed": 1.0}, "seed"),
     ("random_blocks", {"density": math.nan}, "density"), ("diagonal", {"width": 10**40}, "width"),
     ("vertical_stripe", {"sink_frames": 1.0}, "sink_frames"), ("diagonal", {"text_rows": 0}, "text_rows"),
     ("union", {"patterns": [{"name": "diagonal", "param": {}}]}, "param")],
)
def test_pattern_level_errors(name, params, word):
    from sparsevdit import patterns

    with pytest.raises(patterns.PatternError, match=word):
        patterns.build(name, LAYOUT, block_size=BLOCK, **params)
