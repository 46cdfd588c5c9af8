"""The report's pieces: plan picture, attention maps, fidelity chart and the HTML page."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from sparsevdit import patterns as P
from sparsevdit.layout import TokenLayout
from sparsevdit.plan import HeadSpec, LayerEntry, ModelSignature, SparsityPlan
from sparsevdit.report.attention_maps import block_maps, save_attention_maps_png
from sparsevdit.report.fidelity_chart import save_fidelity_png, x_axis
from sparsevdit.report.html_report import local_file, write_report_html
from sparsevdit.report.plan_picture import (check_step, family, plan_step_ranges, save_plan_png,
                                            save_plan_steps_png)

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelSignature("VideoDiT", num_layers=3, num_heads=4, head_dim=16)
LAYOUT = TokenLayout(3, 4, 4, text_tokens=4, text_position="prefix")  # 52 tokens
BLOCK = 8
DIAG = HeadSpec("diagonal", {"width": 16})
MULTI = HeadSpec("multi_diagonal", {"width": 16})
UNION = HeadSpec("union", {"patterns": [{"name": "diagonal", "params": {"width": 8}}, "vertical_stripe"]})


def assert_png(path: Path) -> None:
    with Image.open(path) as img:
        img.verify()
        assert img.format == "PNG"


def only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def mixed_plan(metadata: dict | None = None) -> SparsityPlan:
    entries = [
        LayerEntry(0, (DIAG, MULTI, UNION, HeadSpec("skip"))),
        LayerEntry(1, (DIAG, DIAG, HeadSpec("dense"), MULTI), step_start=0, step_end=2),
        LayerEntry(1, (MULTI, MULTI, MULTI, MULTI), step_start=2, step_end=None),
        # layer 2 has no entry: a dense layer
    ]
    return SparsityPlan(MODEL, LAYOUT, BLOCK, entries, metadata or {})


def qk(heads: int = 4, layout: TokenLayout = LAYOUT, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (heads, layout.num_tokens, 16)
    return 2 * torch.randn(shape, generator=gen), 2 * torch.randn(shape, generator=gen)


# plan picture ---------------------------------------------------------------------------------------
def test_plan_png_of_uniform_and_mixed_plans(tmp_path):
    uniform = SparsityPlan.uniform(MODEL, LAYOUT, "diagonal", {"width": 16}, block_size=BLOCK)
    assert save_plan_png(uniform, tmp_path / "uniform.png") == tmp_path / "uniform.png"
    assert_png(tmp_path / "uniform.png")
    save_plan_png(mixed_plan(), tmp_path / "mixed.png", step=3, title="<mixed>")
    assert_png(tmp_path / "mixed.png")
    assert only(tmp_path) == ["mixed.png", "uniform.png"]  # no temporary file left


def test_family_names():
    plan = mixed_plan()
    assert [family(p) for p in plan.patterns_for(0)] == ["diagonal", "multi_diagonal", "diagonal+vertical_stripe", "skip"]
    assert family(None) == "dense"


def test_step_ranges_merge_identical_steps_and_stop_at_known_steps():
    assert plan_step_ranges(mixed_plan()) == [(0, 2), (2, None)]
    assert plan_step_ranges(mixed_plan({"calibration": {"steps": 6}})) == [(0, 2), (2, 6)]
    uniform = SparsityPlan.uniform(MODEL, LAYOUT, "dense", block_size=BLOCK)
    assert plan_step_ranges(uniform) == [(0, None)]
    closed = SparsityPlan(MODEL, LAYOUT, BLOCK, [LayerEntry(0, (DIAG,) * 4, 1, 3)])
    assert plan_step_ranges(closed) == [(0, 1), (1, 3)]


def test_plan_steps_png_draws_every_range(tmp_path):
    save_plan_steps_png(mixed_plan({"calibration": {"steps": 6}}), tmp_path / "steps.png")
    assert_png(tmp_path / "steps.png")
    bundled = SparsityPlan.load(ROOT / "src/sparsevdit/models/plans/demo-cpu-16x48x48.json")
    save_plan_steps_png(bundled, tmp_path / "bundled.png")
    assert_png(tmp_path / "bundled.png")


@pytest.mark.parametrize("step, metadata, words", [
    (-1, {}, "integer >= 0"),
    (1.0, {}, "integer >= 0"),
    (6, {"calibration": {"steps": 6}}, "made for 6 steps"),
])
def test_plan_png_refuses_a_step_beyond_the_plan(tmp_path, step, metadata, words):
    with pytest.raises(ValueError, match=words):
        save_plan_png(mixed_plan(metadata), tmp_path / "p.png", step=step)
    assert only(tmp_path) == []


def test_step_beyond_the_last_closed_range():
    closed = SparsityPlan(MODEL, LAYOUT, BLOCK, [LayerEntry(0, (DIAG,) * 4, 0, 3)])
    assert check_step(closed, 2) == 2
    with pytest.raises(ValueError, match="ends at step 3"):
        check_step(closed, 3)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken(self, fname, **kwargs):
        Path(fname).write_bytes(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        save_plan_png(mixed_plan(), tmp_path / "p.png")
    (tmp_path / "folder.png").mkdir()
    monkeypatch.undo()
    with pytest.raises(IsADirectoryError):
        save_plan_png(mixed_plan(), tmp_path / "folder.png")
    assert only(tmp_path) == ["folder.png"]


# attention maps -------------------------------------------------------------------------------------
def direct_recall(q: torch.Tensor, k: torch.Tensor, pattern: P.BlockPattern | None, layout: TokenLayout) -> float:
    probs = torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), -1)
    if pattern is None:
        return 1.0
    inv = layout.inverse_permutation(pattern.ordering)
    return float((probs * pattern.token_mask()[inv][:, inv]).sum() / layout.num_tokens)


@pytest.mark.parametrize("layout", [LAYOUT, TokenLayout(3, 4, 4), TokenLayout(2, 3, 5, 3, "suffix")])
@pytest.mark.parametrize("name, params", [("diagonal", {"width": 16}), ("multi_diagonal", {"width": 16}),
                                          ("skip", {}), ("dense", {}), (None, {})])
def test_block_maps_recall_matches_the_token_level_computation(layout, name, params):
    q, k = qk(1, layout)
    pattern = None if name is None else P.build(name, layout, block_size=BLOCK, **params)
    maps = block_maps(q[0], k[0], pattern, layout, chunk=5)
    assert maps.recall == pytest.approx(direct_recall(q[0], k[0], pattern, layout), abs=1e-5)
    assert torch.allclose(maps.dense.sum(-1), torch.ones(maps.dense.shape[0]), atol=1e-5)
    if pattern is not None:
        assert maps.ordering == pattern.ordering and torch.equal(maps.kept, pattern.block_mask)


def test_attention_maps_png_one_layer_and_by_layer(tmp_path):
    q, k = qk()
    pats = [P.build("diagonal", LAYOUT, block_size=BLOCK, width=16), P.build("multi_diagonal", LAYOUT, block_size=BLOCK, width=16),
            None, P.build("skip", LAYOUT, block_size=BLOCK)]
    save_attention_maps_png(q, k, pats, LAYOUT, tmp_path / "one.png", heads=[0, 1, 2, 3], title="<t>")
    assert_png(tmp_path / "one.png")
    q2, k2 = qk(seed=1)
    save_attention_maps_png({0: q, 2: q2}, {0: k, 2: k2}, {0: pats, 2: None}, LAYOUT, tmp_path / "layers.png",
                            heads=[(0, 1), (2, 3)])
    assert_png(tmp_path / "layers.png")
    save_attention_maps_png({0: q, 2: q2}, {0: k, 2: k2}, {0: pats}, LAYOUT, tmp_path / "default.png")
    assert_png(tmp_path / "default.png")
    save_attention_maps_png(q, k, None, LAYOUT, tmp_path / "dense.png", block_size=16)
    assert_png(tmp_path / "dense.png")
    assert only(tmp_path) == ["default.png", "dense.png", "layers.png", "one.png"]


def test_attention_maps_refuse_bad_inputs(tmp_path):
    q, k = qk()
    diag = P.build("diagonal", LAYOUT, block_size=BLOCK, width=16)
    other = TokenLayout(3, 4, 4)
    cases = [
        ((q[:, :-1], k[:, :-1], [diag] * 4, LAYOUT), {}, "51 and 51 tokens; the layout"),
        ((q[None], k[None], [diag] * 4, LAYOUT), {}, r"\[H, N, D\]"),
        ((q, k[:2], [diag] * 4, LAYOUT), {}, "4 heads, k has 2"),
        ((q, k, [diag] * 3, LAYOUT), {}, "3 given for 4 heads"),
        ((q, k, [diag] * 4, LAYOUT), {"heads": [4]}, "out of range 0..3"),
        ((q, k, [diag] * 4, LAYOUT), {"block_size": 16}, "differs from pattern"),
        ((q, k, [P.build("diagonal", other, block_size=BLOCK)] * 4, LAYOUT), {}, "not the layout given"),
        (({0: q}, k, [diag] * 4, LAYOUT), {}, "give q and k alike"),
        (({0: q}, {0: k}, {0: [diag] * 4}, LAYOUT), {"heads": [(1, 0)]}, "layer 1 is not among"),
        (({0: q}, {0: k}, {0: [diag] * 4}, LAYOUT), {"heads": [0]}, r"\(layer, head\) pairs"),
        ((q, k, ["diagonal"] * 4, LAYOUT), {}, "a BlockPattern or None"),
    ]
    for args, kwargs, words in cases:
        with pytest.raises(ValueError, match=words):
            save_attention_maps_png(*args, path=tmp_path / "a.png", **kwargs)
    assert only(tmp_path) == []


# fidelity chart -------------------------------------------------------------------------------------
def test_fidelity_png_from_the_cpu_study(tmp_path):
    study = json.loads((ROOT / "bench/results/fidelity-cpu.json").read_text())
    save_fidelity_png(study["rows"], tmp_path / "density.png")
    save_fidelity_png(study, tmp_path / "time.png", x="time", title="<t>")
    assert_png(tmp_path / "density.png")
    assert_png(tmp_path / "time.png")
    assert x_axis(study["rows"], "time")[0] == "relative_time_flops"
    measured = [dict(r, relative_time_measured=r["relative_time_flops"] * 1.1) for r in study["rows"]]
    key, label = x_axis(measured, "time")
    assert key == "relative_time_measured" and "measured" in label


def test_fidelity_png_skips_unplottable_rows_and_refuses_bad_input(tmp_path):
    rows = [{"method": "a", "density": 0.5, "psnr": 20.0}, {"method": "a", "density": 1.0, "psnr": float("inf")},
            {"method": "new", "density": 0.3, "psnr": None, "ssim": 0.5}]
    save_fidelity_png(rows, tmp_path / "ok.png")  # SSIM panel has one point, PSNR panel one
    assert_png(tmp_path / "ok.png")
    for bad, kwargs, words in [(rows, {"x": "speed"}, "x must be one of"), (rows, {"x": "time"}, "no row has a relative time"),
                               ([{"method": "a", "density": 0.5}], {}, "finite psnr"), ("rows", {}, "list of row objects")]:
        with pytest.raises(ValueError, match=words):
            save_fidelity_png(bad, tmp_path / "bad.png", **kwargs)
    assert only(tmp_path) == ["ok.png"]


# HTML report ----------------------------------------------------------------------------------------
class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]


def demo_report(**extra) -> dict:
    report = {
        "psnr": float("inf"), "ssim": 0.98,
        "per_seed": [{"seed": 0, "class": "ball", "caption": "<script>alert('x')</script> & a ball", "psnr": 31.5, "ssim": 0.97},
                     {"seed": 1, "class": "ring", "caption": "a ring", "psnr": None, "ssim": 0.99}],
        "attention_density": 0.39, "sparse_config": "plan bundled <demo>.json",
        "dense_seconds": 12.0, "sparse_seconds": 8.0, "device": "cpu",
        "settings": {"frames": 16, "seeds": (0, 1), "layout": LAYOUT.to_dict(), "tokens": LAYOUT.num_tokens},
        "files": ["seed0_side_by_side.mp4", "seed1_side_by_side.gif", "missing.gif", "../escape.gif", "frames.png"],
    }
    report.update(extra)
    return report


def test_report_html_is_self_contained_and_escaped(tmp_path):
    for name in ("seed0_side_by_side.mp4", "seed0_side_by_side.gif", "seed1_side_by_side.gif", "frames.png", "plan.png",
                 "maps.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path.parent / "escape.gif").write_bytes(b"x")
    timing = {"dense": {"warmup_seconds": 1.5, "step_ms": [10.0, 12.0, 11.0], "seconds": 12.0},
              "sparse": {"warmup_seconds": 2.5, "step_ms": [5.0, 6.0, 7.0], "median_step_ms": 6.0, "seconds": 8.0},
              "speedup_per_step": 1.83}
    pictures = {"plan": "plan.png", "attention_maps": "maps.png", "fidelity": "fidelity.png", "evil": "https://x.org/a.png"}
    path = write_report_html(tmp_path, demo_report(timing=timing, pictures=pictures))
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "&lt;script&gt;" in page and "&lt;demo&gt;" in page
    links = Links()
    links.feed(page)
    assert links.refs and all((tmp_path / ref).is_file() for ref in links.refs)
    assert "plan.png" in links.refs and "maps.png" in links.refs and "fidelity.png" not in links.refs
    assert links.tags.count("video") == 1  # seed 0 has an mp4, seed 1 only its GIF
    assert "seed1_side_by_side.gif" in links.refs and "1.83x" in page and "11.0" in page and "∞" in page
    assert "missing.gif" not in page.replace("missing.gif</", "")  # neither linked nor shown
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_report_html_omits_missing_parts(tmp_path):
    page = write_report_html(tmp_path, {}).read_text(encoding="utf-8")
    assert "<h1>" in page and "Timing" not in page and "Seeds" not in page and "Pictures" not in page
    page = write_report_html(tmp_path, demo_report(timing="n/a", pictures=None, per_seed="?")).read_text(encoding="utf-8")
    assert "Timing" in page and "1.50x" in page  # total seconds from dense_seconds / sparse_seconds
    assert "warm-up" not in page and "<video" not in page
    with pytest.raises(NotADirectoryError):
        write_report_html(tmp_path / "nowhere", {})
    with pytest.raises(ValueError, match="report must be a dict"):
        write_report_html(tmp_path, [])


def test_local_file_refuses_what_is_not_in_the_folder(tmp_path):
    (tmp_path / "a b.png").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.png").write_bytes(b"x")
    assert local_file(tmp_path, "a b.png") == "a%20b.png"
    assert local_file(tmp_path, "sub/c.png") == "sub/c.png"
    for name in ("sub", "../a b.png", "/etc/passwd", "http://x/a.png", "C:\\a.png", "", None, 3):
        assert local_file(tmp_path, name) is None
