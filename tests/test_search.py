"""Profiling, cost model, sparse-vdit and budget searches, fidelity helpers and their CLI (tiny sizes, CPU)."""

import json
import math
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from sparsevdit import TokenLayout, sparse_attention
from sparsevdit import patterns as P
from sparsevdit.cli import app
from sparsevdit.integrations import model_signature
from sparsevdit.metrics import video_psnr_ssim
from sparsevdit.models.data import CLASSES
from sparsevdit.models.vdit import VDiTConfig, VideoDiT
from sparsevdit.plan import HeadSpec, LayerEntry, SparsityPlan
from sparsevdit.search import (
    BudgetSettings, CalibrationConfig, CostModel, Profile, available_algorithms, budget_search, default_candidates,
    run_profile, run_search,
)
from sparsevdit.search.budget import Allocator, split_steps
from sparsevdit.search.common import MaskSpec, measure_layer, sample_rows, sample_video
from sparsevdit.search.cost import DEFAULT_KERNEL_TABLE, family_of

TINY = VDiTConfig(dim=64, depth=2, heads=2, num_classes=len(CLASSES), frames=4, height=32, width=32)
CALIB = CalibrationConfig(seeds=(1, 2), classes=(0, 1), frames=4, height=32, width=32, steps=4, block_size=16)


def tiny_model(seed=0, std=0.05):
    torch.manual_seed(seed)
    model = VideoDiT(TINY)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=std)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def sharp_model():
    """Larger weights: attention is peaked, so patterns matter for the output."""
    return tiny_model(1, std=0.12)


@pytest.fixture(scope="module")
def profile(sharp_model):
    return run_profile(sharp_model, CALIB, rows_per_block=None, progress=False)


# measurement engine ------------------------------------------------------------------------------
def test_measure_layer_is_exact_against_the_reference_backend():
    lay = TokenLayout(4, 5, 6)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, lay.num_tokens, 16) * 2 for _ in range(3))
    bs = 16
    dense_p, skip_p = P.build("dense", lay, block_size=bs), P.build("skip", lay, block_size=bs)
    pats = [
        P.build("diagonal", lay, block_size=bs, width=30),
        P.build("multi_diagonal", lay, block_size=bs, width=20),
        P.build("union", lay, block_size=bs, patterns=[
            {"name": "multi_diagonal", "params": {"width": 20}},
            {"name": "vertical_stripe", "params": {"blocks": [0], "ordering": "position_major"}}]),
    ]
    mixed = [pats[0], dense_p, skip_p]
    cands = [MaskSpec("dense"), MaskSpec("skip")] + [MaskSpec.of(p) for p in pats] + [MaskSpec.of(mixed)]
    st = measure_layer(q, k, v, lay, bs, sample_rows(lay, bs, None), cands, block_map=True, chunk_elements=3000)
    dense = sparse_attention(q, k, v, dense_p, layout=lay, backend="reference")
    torch.testing.assert_close(st.norm2.float(), dense.pow(2).sum((0, 2, 3)), rtol=1e-4, atol=1e-3)
    for i, p in enumerate(pats + [mixed]):
        o = sparse_attention(q, k, v, p, layout=lay, backend="reference")
        torch.testing.assert_close(st.sq_err[:, 2 + i].float(), (o - dense).pow(2).sum((0, 2, 3)), rtol=1e-4, atol=1e-3)
    assert torch.all(st.rel_err[:, 0] == 0) and torch.allclose(st.rel_err[:, 1], torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(st.mean_recall[:, 0], torch.ones(3, dtype=torch.float64))
    # mass sums to one per row, in both block orders and in the pooled map
    for o in ("frame_major", "position_major"):
        torch.testing.assert_close(st.column_mass[o].sum(1) / st.rows, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(st.block_map.sum(-1) / st.block_rows, torch.ones(3, st.block_map.shape[1], dtype=torch.float64))


def test_sampled_rows_measure_only_those_rows():
    lay = TokenLayout(4, 4, 8)
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, lay.num_tokens, 8) for _ in range(3))
    rows = sample_rows(lay, 16, 3, seed=5)
    assert rows.numel() == 3 * 8 and len(set(rows.tolist())) == rows.numel()
    pat = P.build("diagonal", lay, block_size=16, width=20)
    st = measure_layer(q, k, v, lay, 16, rows, [MaskSpec.of(pat)])
    o = sparse_attention(q, k, v, pat, layout=lay, backend="reference")[:, :, rows]
    d = torch.softmax(q[:, :, rows] @ k.transpose(-1, -2) / math.sqrt(8), -1) @ v
    torch.testing.assert_close(st.sq_err[:, 0].float(), (o - d).pow(2).sum((0, 2, 3)), rtol=1e-4, atol=1e-4)


# cost model --------------------------------------------------------------------------------------
def test_measured_cost_interpolates_the_kernel_table():
    cm = CostModel.measured(DEFAULT_KERNEL_TABLE, shape="wan1.3b")
    rows = json.loads(DEFAULT_KERNEL_TABLE.read_text())["rows"]
    r = {(x["backend"], x["pattern"], round(x["density"], 4)): x for x in rows if x["shape"] == "wan1.3b"}
    a, b = r[("triton", "diagonal", 0.1027)], r[("triton", "diagonal", 0.2514)]
    ta, tb = a["ms"] / a["cudnn_dense_ms"], b["ms"] / b["cudnn_dense_ms"]
    assert cm.head_time("diagonal", a["density"]) == pytest.approx(ta)
    mid = (a["density"] + b["density"]) / 2
    assert cm.head_time("diagonal", mid) == pytest.approx((ta + tb) / 2)
    low = r[("triton", "diagonal", 0.0502)]
    t_low = low["ms"] / low["cudnn_dense_ms"]
    assert cm.head_time("diagonal", low["density"] / 2) == pytest.approx(t_low / 2)  # proportional below
    dense_kernel = r[("triton", "dense", 1.0)]
    assert cm.head_time("dense", 1.0) == pytest.approx(dense_kernel["ms"] / dense_kernel["cudnn_dense_ms"])
    assert cm.head_time("vertical_stripe", 0.1) == pytest.approx(cm.head_time("random", 0.1))  # borrowed
    assert cm.head_time("skip", 0.0) == 0.0
    assert "triton" in cm.describe()
    flex = CostModel.measured(DEFAULT_KERNEL_TABLE, shape="wan1.3b", backend="flex")
    assert flex.head_time("diagonal", 0.1) > cm.head_time("diagonal", 0.1)
    assert CostModel.measured(num_tokens=80_000).source.endswith("wan14b")
    with pytest.raises(ValueError, match="no rows for shape"):
        CostModel.measured(shape="nope")


def test_layer_time_prices_dense_heads_at_the_faster_dense_kernel():
    # sparse_attention("auto") runs a mixed layer's dense heads in their own launch on the faster of fused
    # SDPA (1.0) and our kernel's dense time (the Gluon kernel beats cuDNN in the H200 table)
    lay = TokenLayout(4, 8, 8)
    dense = P.build("dense", lay, block_size=16)
    diag = P.build("diagonal", lay, block_size=16, width=48)
    cm = CostModel.measured(DEFAULT_KERNEL_TABLE, shape="wan1.3b")
    ours = cm.head_time("dense", 1.0)
    assert ours < 1.0
    assert cm.layer_time([dense, diag]) == pytest.approx((ours + cm.pattern_time(diag)) / 2)
    assert cm.layer_time([dense, dense]) == pytest.approx(ours)
    slow = CostModel.flops(0.1)  # a kernel slower than SDPA at dense: dense heads cost 1.0
    assert slow.head_time("dense", 1.0) > 1.0 and slow.layer_time([dense, dense]) == 1.0


def test_flop_cost_and_plan_time():
    cm = CostModel.flops(0.1)
    assert cm.head_time("diagonal", 0.2) == pytest.approx(0.22)
    lay = TokenLayout(4, 8, 8)
    sig = model_signature(tiny_model())
    diag = P.build("diagonal", lay, block_size=16, width=48)
    plan = SparsityPlan.uniform(sig, lay, "diagonal", {"width": 48}, block_size=16)
    pred = cm.plan_time(plan, steps=3)
    assert pred["density"] == pytest.approx(diag.density)
    assert pred["speedup"] == pytest.approx(1 / (1.1 * diag.density))
    dense = SparsityPlan.uniform(sig, lay, "dense", block_size=16)
    assert cm.plan_time(dense, 3)["relative_time"] == 1.0
    assert family_of("union", {"patterns": ["multi_diagonal", "vertical_stripe"]}) == "multi+stripes"
    assert family_of("union", {"patterns": [{"name": "diagonal"}, {"name": "vertical_stripe"}]}) == "diag+stripes"


def test_cost_model_round_trips(tmp_path):
    cm = CostModel.measured(shape="hunyuan")
    path = cm.save(tmp_path / "cost.json")
    again = CostModel.from_spec(str(path))
    assert again.head_time("multi+stripes", 0.17) == pytest.approx(cm.head_time("multi+stripes", 0.17))
    assert CostModel.from_spec("flops:0.25").head_time("diagonal", 0.5) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="cost model"):
        CostModel.from_spec("nonsense")


# candidates and profile --------------------------------------------------------------------------
def test_default_candidates_cover_the_families():
    lay = TokenLayout(16, 8, 8)
    cands = default_candidates(lay, 32)
    fams = {c.family for c in cands}
    assert fams == {"dense", "skip", "diagonal", "multi_diagonal", "vertical_stripe", "diag+stripes", "multi+stripes"}
    assert sum(c.family == "diagonal" for c in cands) >= 3 and sum(c.family == "multi_diagonal" for c in cands) >= 3
    ms = next(c for c in cands if c.family == "multi+stripes")
    spec = ms.spec([3, 1])
    pat = P.build(spec.pattern, lay, block_size=32, **spec.params)
    assert pat.ordering == "position_major" and pat.block_mask[:, 1].all() and pat.block_mask[:, 3].all()


def test_profile_shapes_and_round_trip(profile, tmp_path):
    prof = profile
    S, L, H, C = CALIB.steps, TINY.depth, TINY.heads, len(prof.candidates)
    nb = P.num_blocks(CALIB.layout(tiny_model()).num_tokens, CALIB.block_size)
    assert prof.rel_err.shape == prof.mse.shape == prof.recall.shape == (S, L, H, C)
    assert prof.density.shape == (L, H, C) and prof.out_rms.shape == (S, L, H)
    for o in ("frame_major", "position_major"):
        assert prof.column_mass[o].shape == (S, L, H, nb)
        torch.testing.assert_close(prof.column_mass[o].sum(-1), torch.ones(S, L, H), atol=1e-4, rtol=1e-4)
    assert prof.block_map.shape == (L, H, nb, nb)
    assert prof.dense_video.shape == (2, 3, 4, 32, 32)
    labels = prof.labels()
    assert torch.all(prof.rel_err[..., labels.index("dense")] == 0)
    torch.testing.assert_close(prof.rel_err[..., labels.index("skip")], torch.ones(S, L, H))
    torch.testing.assert_close(prof.dense_video, sample_video(tiny_model(1, std=0.12), CALIB))
    # per-head stripes: the heads' own most attended key blocks
    per_head = next(c for c in prof.candidates if c.per_head and c.base is None)
    spec = prof.spec(prof.candidates.index(per_head), 1, 0)
    assert len(spec.params["blocks"]) == per_head.stripes
    again = Profile.load(prof.save(tmp_path / "p.pt"))
    torch.testing.assert_close(again.rel_err, prof.rel_err)
    assert again.labels() == labels and again.calib == prof.calib


# budget ------------------------------------------------------------------------------------------
def test_split_steps():
    assert split_steps(12, 3) == [(0, 4), (4, 8), (8, 12)]
    assert split_steps(12, 2, warmup=2) == [(2, 7), (7, 12)]
    assert split_steps(4, 10) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert split_steps(4, None, warmup=1) == [(1, 2), (2, 3), (3, 4)]
    assert split_steps(3, 1, warmup=5) == []


@pytest.mark.parametrize("max_time", [0.0, 0.2, 0.5, 1.0])
def test_budget_respects_a_time_budget(profile, max_time):
    cm = CostModel.flops()
    plan = budget_search(profile, cm, BudgetSettings(max_time=max_time))
    plan.validate()
    pred = cm.plan_time(plan, profile.steps)
    assert pred["relative_time"] <= max_time + 1e-9
    assert plan.metadata["expected_relative_time"] == pytest.approx(pred["relative_time"])
    assert plan.metadata["algorithm"] == "budget"
    if max_time == 1.0:
        assert plan.entries == []  # nothing is cheaper than dense at no error


def test_budget_more_time_buys_less_error(profile):
    errs = [budget_search(profile, CostModel.flops(), BudgetSettings(max_time=t)).metadata["expected_rel_error"]
            for t in (0.1, 0.3, 0.6)]
    assert errs[0] >= errs[1] >= errs[2]


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.3])
def test_budget_respects_a_per_layer_error_budget(profile, tau):
    settings = BudgetSettings(max_rel_error=tau, step_ranges=2)
    alloc = Allocator(profile, CostModel.flops(), settings)
    plan = budget_search(profile, CostModel.flops(), settings)
    for e in plan.entries:  # every sparse (range, layer) keeps its layer error within the budget
        end = e.step_end if e.step_end is not None else profile.steps
        picks = {k: v for k, v in alloc.for_layer_error(tau)[1].items() if k[2] == e.layer and e.step_start <= k[0] < end}
        for (a, b, layer), heads in picks.items():
            assert alloc.layer_rel_error(a, b, layer, heads) <= tau + 1e-9
    if tau == 0.0:
        assert plan.entries == []
    assert plan.metadata["expected_rel_error"] <= tau + 1e-9


def test_budget_step_ranges_warmup_and_dense_layers(profile):
    plan = budget_search(profile, CostModel.flops(), BudgetSettings(max_time=0.3, step_ranges=2, dense_warmup_steps=1,
                                                                    dense_layers=(1,)))
    assert plan.entries and all(e.layer == 0 for e in plan.entries)
    assert min(e.step_start for e in plan.entries) >= 1
    assert {e.step_start for e in plan.entries} <= {a for a, _ in split_steps(4, 2, warmup=1)}  # [1, 3) + [3, 4)
    assert plan.patterns_for(0, 0) is None


def test_budget_target_psnr(sharp_model, profile):
    target = 30.0
    plan = budget_search(profile, CostModel.flops(), BudgetSettings(target_psnr=target, bisection_steps=4), model=sharp_model)
    md = plan.metadata
    assert md["calibration_psnr"] is None or md["calibration_psnr"] >= target
    assert md["bisection"]
    video = sample_video(sharp_model, CALIB, plan=plan)
    psnr = video_psnr_ssim(video, profile.dense_video)["psnr"]
    assert psnr >= target
    if md["calibration_psnr"] is not None:
        assert psnr == pytest.approx(md["calibration_psnr"])
    assert plan.entries  # the target is reachable sparsely on this model
    # a lower target is never more expensive
    low = budget_search(profile, CostModel.flops(), BudgetSettings(target_psnr=15.0, bisection_steps=4), model=sharp_model)
    assert low.metadata["expected_relative_time"] <= md["expected_relative_time"] + 1e-9


def test_budget_target_psnr_on_other_seeds(sharp_model, profile):
    """psnr_seeds: the target is measured on those seeds' videos (dense sampled once), not the profile's."""
    seeds = (7, 8, 9)
    cache: dict = {}
    settings = BudgetSettings(target_psnr=25.0, bisection_steps=3, psnr_seeds=seeds)
    plan = budget_search(profile, CostModel.flops(), settings, model=sharp_model, cache=cache)
    md = plan.metadata
    assert md["settings"]["psnr_seeds"] == list(seeds)
    other = replace(CALIB, seeds=seeds, classes=tuple(s % TINY.num_classes for s in seeds))
    dense = sample_video(sharp_model, other)
    psnr = video_psnr_ssim(sample_video(sharp_model, other, plan=plan), dense)["psnr"]
    assert md["calibration_psnr"] is not None and psnr == pytest.approx(md["calibration_psnr"])
    assert psnr >= 25.0
    # the same search on the calibration seeds reuses nothing of it (other seeds, other videos)
    plain = budget_search(profile, CostModel.flops(), BudgetSettings(target_psnr=25.0, bisection_steps=3),
                          model=sharp_model, cache=cache)
    assert plain.metadata["settings"]["psnr_seeds"] == []
    if plain.metadata["calibration_psnr"] is not None:
        on_calib = video_psnr_ssim(sample_video(sharp_model, CALIB, plan=plain), profile.dense_video)["psnr"]
        assert on_calib == pytest.approx(plain.metadata["calibration_psnr"])


def test_budget_layer_sensitivity(sharp_model, profile):
    plan = budget_search(profile, CostModel.flops(), BudgetSettings(max_time=0.3, layer_sensitivity=True), model=sharp_model)
    sens = plan.metadata["layer_sensitivity"]
    assert len(sens) == TINY.depth and all(s >= 0 for s in sens)
    assert plan.metadata["expected_relative_time"] <= 0.3 + 1e-9


def test_budget_step_sensitivity_weighs_groups_of_steps(sharp_model, profile):
    from sparsevdit.search.budget import step_groups, step_sensitivity

    settings = BudgetSettings(max_time=0.3, step_sensitivity=True, step_groups=2)
    sens = step_sensitivity(profile, CostModel.flops(), settings, sharp_model)
    assert sens.shape == (CALIB.steps,) and bool((sens >= 0).all())
    spans = step_groups(CALIB.steps, 2)
    assert spans == [(0, 2), (2, 4)]
    for a, b in spans:  # one value per group, mean 1 over the groups
        assert torch.allclose(sens[a:b], sens[a].expand(b - a))
    assert float(torch.stack([sens[a] for a, _ in spans]).mean()) == pytest.approx(1.0)
    plan = budget_search(profile, CostModel.flops(), settings, model=sharp_model)
    md = plan.metadata
    assert md["layer_sensitivity"] is None and len(md["step_sensitivity"]) == CALIB.steps
    assert md["step_sensitivity"] == pytest.approx(sens.tolist())
    assert md["expected_relative_time"] <= 0.3 + 1e-9


def test_budget_weights_of_step_and_layer_multiply(sharp_model, profile):
    """A separable [steps, layers] weight equals scaling the profile's energies by hand."""
    weight = torch.tensor([2.0, 1.0, 0.5, 0.25])[:, None] * torch.tensor([1.0, 3.0])[None, :]
    weighted = Allocator(profile, CostModel.flops(), BudgetSettings(max_time=0.3), weight)
    plain = Allocator(profile, CostModel.flops(), BudgetSettings(max_time=0.3))
    assert torch.allclose(weighted.energy, plain.energy * weight[:, :, None, None])
    with pytest.raises(ValueError, match="give \\[layers\\] or \\[steps, layers\\]"):
        Allocator(profile, CostModel.flops(), BudgetSettings(max_time=0.3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="step_groups must be >= 1"):
        BudgetSettings(max_time=0.3, step_groups=0)


# sparse-vdit -------------------------------------------------------------------------------------
def test_sparse_vdit_tiny_epsilon_keeps_dense(sharp_model):
    plan = run_search("sparse-vdit", sharp_model, CALIB, epsilon=1e-12, progress=False)
    assert plan.entries == [] and plan.metadata["mode_fractions"]["dense"] == 1.0


def test_sparse_vdit_lambda_zero_takes_the_most_accurate_sparse_mode(sharp_model):
    plan = run_search("sparse-vdit", sharp_model, CALIB, lam=0.0, epsilon=1e9, progress=False)
    fr = plan.metadata["mode_fractions"]
    assert fr["dense"] == 0.0 and fr["skip"] == 0.0
    assert fr["diagonal"] + fr["multi_diagonal"] + fr["vertical_stripe"] == pytest.approx(1.0)


def test_sparse_vdit_large_lambda_skips(sharp_model):
    plan = run_search("sparse-vdit", sharp_model, CALIB, lam=100.0, epsilon=1e9, progress=False)
    assert plan.metadata["mode_fractions"]["skip"] == 1.0
    assert plan.metadata["expected_relative_time"] == 0.0


def test_sparse_vdit_plan_reproduces_the_search_run(sharp_model):
    plan = run_search("sparse-vdit", sharp_model, CALIB, lam=0.02, epsilon=0.05, progress=False)
    plan = SparsityPlan.from_dict(json.loads(json.dumps(plan.to_dict())))  # through JSON
    md = plan.metadata
    assert 0 < md["mode_fractions"]["dense"] < 1 or md["mode_fractions"]["dense"] == 0
    video = sample_video(sharp_model, CALIB, plan=plan)
    psnr = video_psnr_ssim(video, sample_video(sharp_model, CALIB))["psnr"]
    if md["calibration_psnr"] is None:
        assert math.isinf(psnr)
    else:
        assert psnr == pytest.approx(md["calibration_psnr"], rel=1e-6)
    # step ranges: per step choices merged, non-overlapping, covering only sparse runs
    for e in plan.entries:
        assert any(h.pattern != "dense" for h in e.heads)


def test_registry():
    assert {"sparse-vdit", "budget"} <= set(available_algorithms())
    with pytest.raises(ValueError, match="unknown search algorithm"):
        run_search("nope", tiny_model(), CALIB)
    with pytest.raises(ValueError, match="has no option"):
        run_search("sparse-vdit", tiny_model(), CALIB, target_psnr=3)
    with pytest.raises(ValueError, match="exactly one"):
        BudgetSettings()
    with pytest.raises(ValueError, match="exactly one"):
        BudgetSettings(max_time=0.3, target_psnr=20)


# baselines and fidelity helpers ------------------------------------------------------------------
def test_svg_and_fidelity_quick(model, tmp_path):
    from sparsevdit.search.fidelity import markdown_table, run_fidelity

    res = run_fidelity(model, out=tmp_path / "f.json", plot=tmp_path / "f.png", frames=4, height=32, width=32, steps=2,
                       block_size=16, calib_seeds=(5,), eval_seeds=(6,), quick=True)
    methods = {r["method"] for r in res["rows"]}
    assert methods == {"uniform-diag", "uniform-multi", "svg", "budget", "budget+sens", "sparse-vdit", "radial"}
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "f.json").read_text())["rows"]
    svg = next(r for r in res["rows"] if r["method"] == "svg")
    assert 0 < svg["density"] < 1 and 0 <= svg["spatial_fraction"] <= 1 and svg["selections"] > 0
    assert "| budget |" in markdown_table(res)
    assert all("relative_time_measured" not in r for r in res["rows"])  # CPU default: predicted times only


def test_fidelity_measures_warm_time_against_warm_dense(model, tmp_path):
    from sparsevdit.search.fidelity import run_fidelity

    grid = {"uniform_densities": (0.3,), "svg": (), "sparse_vdit": (), "budget": (), "budget_sensitivity": (), "methods": ()}
    res = run_fidelity(model, out=None, plot=tmp_path / "f.png", frames=4, height=32, width=32, steps=2, block_size=16,
                       calib_seeds=(5,), eval_seeds=(6, 7), grid=grid, measure_time=True)
    assert "relative_time_measured" in res["cost_models"] and res["dense_eval_seconds"] > 0
    for row in res["rows"]:
        assert row["relative_time_measured"] == pytest.approx(row["eval_seconds"] / res["dense_eval_seconds"])
        assert len(row["ssim_per_seed"]) == 2


def test_fidelity_grid_is_checked():
    from sparsevdit.search.fidelity import check_grid

    ok = check_grid({"budget": [{"max_time": 0.2, "step_sensitivity": True}], "svg": [[0.2, 0]], "uniform_densities": [0.1]})
    assert ok == {"budget": ({"max_time": 0.2, "step_sensitivity": True},), "svg": ((0.2, 0.0),), "uniform_densities": (0.1,)}
    for bad, match in ((["budget"], "JSON object"), ({"budgt": []}, "unknown fidelity grid keys \\['budgt'\\]"),
                       ({"svg": 0.2}, "a list"), ({"svg": [[0.2]]}, "pairs"), ({"svg": [[0, 0]]}, "sparsity"),
                       ({"svg": [[0.2, 2]]}, "dense first"), ({"budget": [0.2]}, "object of budget settings"),
                       ({"budget": [{"max_time": 0.2, "target_psnr": 20}]}, "exactly one"),
                       ({"budget": [{"max_tme": 0.2}]}, "max_tme"), ({"methods": [{"params": {}}]}, "'method' required"),
                       ({"methods": [{"method": "nope"}]}, "unknown method 'nope'"),
                       ({"methods": [{"method": "radial", "params": {"decay": 1}}]}, "no parameter decay"),
                       ({"methods": [{"method": "radial", "dense_fraction": 2}]}, "dense_fraction")):
        with pytest.raises((ValueError, TypeError), match=match):
            check_grid(bad)


def test_fidelity_refuses_psnr_seeds_that_are_held_out(model):
    from sparsevdit.search.fidelity import run_fidelity

    with pytest.raises(ValueError, match=r"psnr_seeds \[3\] are held-out seeds too"):
        run_fidelity(model, out=None, plot=None, frames=4, eval_seeds=(2, 3),
                     grid={"budget": [{"target_psnr": 20.0, "psnr_seeds": [3, 50]}]})


def test_fidelity_methods_rows_equal_sampling_with_the_method_applied(model, tmp_path):
    from sparsevdit.integrations import apply, remove
    from sparsevdit.search.common import CalibrationConfig, sample_video
    from sparsevdit.search.fidelity import run_fidelity
    from sparsevdit.metrics import video_psnr_ssim

    entry = {"method": "sliding_tile", "params": {"tile": [1, 4, 4], "window": [3, 1, 1]}, "dense_fraction": 0.5}
    dynamic = {"method": "topk", "params": {"tau": 0.5}}
    grid = {"uniform_densities": (), "svg": (), "sparse_vdit": (), "budget_sensitivity": (), "budget": (),
            "methods": (entry, dynamic)}
    res = run_fidelity(model, out=None, plot=tmp_path / "f.png", frames=4, height=32, width=32, steps=2, block_size=16,
                       calib_seeds=(5,), eval_seeds=(6,), grid=grid, measure_time=True)
    row, topk = res["rows"]
    assert topk["method"] == "topk" and 0 < topk["density"] < 1 and topk["selections"] == 2 * 2 * model.cfg.depth
    assert row["method"] == "sliding_tile" and row["params"]["dense_steps"] == 1 and 0 < row["density"] < 1
    # the same videos by hand: the held-out seed dense, and sparse with the method applied
    evalc = CalibrationConfig(seeds=(6,), classes=((6 * 4 + 1) % model.cfg.num_classes,), frames=4, height=32, width=32,
                              steps=2, block_size=16, backend="auto")
    dense = sample_video(model, evalc)
    apply(model, method="sliding_tile", block_size=16, tile=[1, 4, 4], window=[3, 1, 1], dense_steps=1)
    try:
        sparse = sample_video(model, evalc)
    finally:
        remove(model)
    assert row["psnr"] == pytest.approx(video_psnr_ssim(sparse, dense)["psnr"], abs=1e-3)
    apply(model, method="topk", block_size=16, tau=0.5)
    try:
        sparse = sample_video(model, evalc)
    finally:
        remove(model)
    assert topk["psnr"] == pytest.approx(video_psnr_ssim(sparse, dense)["psnr"], abs=1e-3)


def test_fidelity_grid_runs_step_sensitivity_and_saves_plans(model, tmp_path):
    from sparsevdit.search.fidelity import run_fidelity

    grid = {"uniform_densities": (), "svg": (), "sparse_vdit": (), "budget_sensitivity": (), "methods": (),
            "budget": ({"max_time": 0.3}, {"max_time": 0.3, "step_sensitivity": True},
                       {"max_time": 0.2, "step_sensitivity": True, "layer_sensitivity": True})}
    res = run_fidelity(model, out=None, plot=None, frames=4, height=32, width=32, steps=2, block_size=16,
                       calib_seeds=(5,), eval_seeds=(6,), grid=grid, plans_dir=tmp_path / "plans")
    assert [r["method"] for r in res["rows"]] == ["budget", "budget+steps", "budget+sens+steps"]
    assert res["rows"][1]["step_sensitivity"] is not None and res["rows"][1]["layer_sensitivity"] is None
    assert res["rows"][2]["step_sensitivity"] is not None and res["rows"][2]["layer_sensitivity"] is not None
    saved = sorted(p.name for p in (tmp_path / "plans").iterdir())
    assert len(saved) == 3 and saved[0].startswith("00-budget-max_time_0.3")
    for name in saved:  # each a loadable plan
        SparsityPlan.load(tmp_path / "plans" / name)


# command line ------------------------------------------------------------------------------------
runner = CliRunner()
SMALL = ["--frames", "4", "--height", "16", "--steps", "2", "--block-size", "16"]


@pytest.mark.parametrize("algorithm, extra", [("budget", ["--max-time", "0.4", "--step-ranges", "2"]),
                                              ("sparse-vdit", ["--lambda", "0.05", "--epsilon", "0.05"])])
def test_cli_search_then_demo_plan(tmp_path, algorithm, extra):
    plan_path = tmp_path / "plan.json"
    result = runner.invoke(app, ["search", "--algorithm", algorithm, "--out", str(plan_path), "--seeds", "7"] + SMALL + extra,
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "expected" in result.output or "attention density" in result.output
    plan = SparsityPlan.load(plan_path)
    assert plan.metadata["algorithm"] == algorithm
    result = runner.invoke(app, ["demo", "--plan", str(plan_path), "--out", str(tmp_path / "demo"), "--seeds", "0"] + SMALL,
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert "plan" in report["sparse_config"]
    assert report["attention_density"] == pytest.approx(plan.metadata["expected_density"], abs=1e-6)


def test_cli_demo_plan_of_another_size_fails_clearly(tmp_path):
    plan_path = tmp_path / "plan.json"
    assert runner.invoke(app, ["search", "--out", str(plan_path), "--seeds", "7", "--max-time", "0.5"] + SMALL).exit_code == 0
    result = runner.invoke(app, ["demo", "--plan", str(plan_path), "--out", str(tmp_path / "d"), "--frames", "4",
                                 "--height", "24", "--steps", "2", "--seeds", "0"], terminal_width=300)
    assert result.exit_code == 2
    assert "4x4x4 video" in result.output and "4x6x6 video" in result.output


def test_cli_profile_budget_from_profile_and_cost(tmp_path):
    prof_path = tmp_path / "p.pt"
    result = runner.invoke(app, ["profile", "--out", str(prof_path), "--seeds", "3"] + SMALL, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert Profile.load(prof_path).steps == 2
    result = runner.invoke(app, ["search", "--profile", str(prof_path), "--out", str(tmp_path / "plan.json"),
                                 "--max-rel-error", "0.3", "--cost", "measured"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "measured" in SparsityPlan.load(tmp_path / "plan.json").metadata["cost_model"]
    result = runner.invoke(app, ["cost", "--source", "measured", "--out", str(tmp_path / "c.json")] + SMALL[:4],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "diag+stripes" in result.output and (tmp_path / "c.json").exists()
    result = runner.invoke(app, ["search", "--algorithm", "nope"], terminal_width=200)
    assert result.exit_code == 2 and "unknown search algorithm" in result.output


def test_cost_family_of_a_methods_mask_comes_from_its_block_lists():
    from sparsevdit import TokenLayout
    from sparsevdit.methods import build_for
    from sparsevdit.search.cost import pattern_family, structural_family

    lay = TokenLayout(16, 32, 32, text_tokens=4, text_position="prefix")
    assert structural_family(P.build("diagonal", lay, block_size=128, width=2048)) == "diagonal"
    assert structural_family(P.build("random_blocks", lay, block_size=128, density=0.2, seed=1)) == "random"
    tile = build_for("sliding_tile", lay, 128, {"tile": [2, 8, 8], "window": [3, 3, 3]}, layer=0, head=0, step=0)
    radial = build_for("radial", lay, 128, {}, layer=0, head=0, step=0)
    assert pattern_family(tile) == "multi_diagonal" and pattern_family(radial) == "multi_diagonal"
    assert pattern_family(P.build("diagonal", lay, block_size=128, width=2048)) == "diagonal"  # by recipe


def test_methods_offer_themselves_to_the_search_and_a_plan_can_pick_them(tmp_path):
    from dataclasses import dataclass
    from typing import ClassVar

    from sparsevdit.methods import Method, MethodParams, register_method, unregister_method
    from sparsevdit.plan import SparsityPlan
    from sparsevdit.search.candidates import build, default_candidates, method_candidate
    from sparsevdit.search.cost import CostModel
    from sparsevdit.search.budget import candidate_times

    lay = TokenLayout(4, 8, 8, text_tokens=4, text_position="prefix")

    @dataclass(frozen=True, kw_only=True)
    class BandParams(MethodParams):
        method: ClassVar[str] = "test_band"
        width: int = 16

    class Band(Method):
        name, Params, varies = "test_band", BandParams, frozenset()

        @staticmethod
        def build(layout, block_size, params, *, layer, head, step):
            return P.build("diagonal", layout, block_size=block_size, width=params.width)

        @classmethod
        def full_params(cls, layout):
            return {"width": 2 * layout.num_tokens}

        @classmethod
        def search_params(cls, layout, block_size):
            return [{"width": 40}]

    register_method(Band)
    try:
        cands = default_candidates(lay, 16)
        mine = [c for c in cands if c.method == "test_band"]
        assert len(mine) == 1 and mine[0].spec().to_dict() == {"method": "test_band", "params": {"width": 40}}
        assert mine[0].family == "diagonal"  # priced by the shape of its mask
        assert {c.method for c in cands if c.method} >= {"radial", "sliding_tile", "test_band"}
        # a plan made of a method candidate's spec validates, saves, loads and builds the same mask
        cand = mine[0]
        sig = model_signature(VideoDiT(VDiTConfig(dim=32, depth=1, heads=2, num_classes=9, frames=4, height=32, width=32,
                                                  text_in_attention=True)))
        plan = SparsityPlan(sig, lay, 16, [LayerEntry(0, (cand.spec(), HeadSpec("dense")))])
        plan.save(tmp_path / "p.json")
        loaded = SparsityPlan.load(tmp_path / "p.json")
        assert torch.equal(loaded.patterns_for(0, 3)[0].block_mask, build(cand, lay, 16).block_mask)
    finally:
        unregister_method("test_band")
    with pytest.raises(ValueError, match="per head, layer, step"):
        class Varying(Band):
            name, varies = "test_varying", frozenset({"layer", "head", "step"})

        register_method(Varying)
        try:
            method_candidate("test_varying", {}, lay, 16)
        finally:
            unregister_method("test_varying")
