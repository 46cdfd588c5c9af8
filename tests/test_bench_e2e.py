"""`sparsevdit bench e2e` (tiny random Wan config on CPU) and `bench kernels --calibrate` wiring."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from sparsevdit.bench import e2e
from sparsevdit.cli import app

runner = CliRunner()
ROW_KEYS = {"model", "row", "target_density", "density", "backend", "backend_heads", "ms", "ms_all", "speedup",
            "rel_diff_vs_dense", "tokens", "block_size", "plan"}


@pytest.mark.parametrize("name", ["wan1.3b", "wan14b"])
def test_full_size_plans_reach_the_target_density(name):
    spec = e2e.MODELS[name]
    assert spec.layout.num_tokens == {"wan1.3b": 32_760, "wan14b": 75_600}[name]
    for target in (0.1, 0.2, 0.3):
        plan = e2e.mixed_plan(spec.signature, spec.layout, target, block_size=128)
        plan.check_model(spec.signature, spec.layout)
        assert abs(e2e.plan_density(plan) - target) < 0.01
        kinds = {h.pattern for entry in plan.entries for h in entry.heads}
        assert kinds == {"union", "multi_diagonal"} and len(plan.entries) == spec.signature.num_layers
        # heads alternate, shifted by one from layer to layer
        assert plan.entries[0].heads[0].pattern == "union" and plan.entries[1].heads[0].pattern == "multi_diagonal"
    dense = e2e.mixed_plan(spec.signature, spec.layout, 1.0)
    assert e2e.plan_density(dense) == 1.0


def test_tiny_plans_reach_the_target_density():
    spec = e2e.MODELS["tiny"]
    for target in (0.1, 0.2, 0.3):
        plan = e2e.mixed_plan(spec.signature, spec.layout, target, block_size=spec.block_size)
        assert abs(e2e.plan_density(plan) - target) < 0.02


def test_build_model_in_low_precision_keeps_fp32_modules_and_restores_defaults():
    pytest.importorskip("diffusers")
    before = torch.get_default_dtype()
    model = e2e.build_model(e2e.MODELS["tiny"], torch.device("cpu"), torch.bfloat16)
    assert torch.get_default_dtype() == before
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.blocks[0].scale_shift_table.dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())


def _check_result(data: dict, densities=(0.1, 0.2, 0.3)):
    for key in ("command", "gpu", "torch", "date", "benchmark", "settings", "models", "rows"):
        assert key in data, key
    rows = data["rows"]
    assert [r["row"] for r in rows] == ["dense", "plan dense"] + [f"plan {d:.0%}" for d in densities]
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["ms"] > 0 and len(r["ms_all"]) == data["settings"]["rep"]
    assert rows[1]["backend"] == "sdpa" and rows[1]["rel_diff_vs_dense"] < 1e-5
    for r, d in zip(rows[2:], densities):
        assert abs(r["density"] - d) < 0.02 and r["backend"] != "sdpa" and r["rel_diff_vs_dense"] > 0
    assert data["models"][0]["signature"]["class_name"] == "WanTransformer3DModel"


def test_e2e_tiny_runs_on_cpu_and_writes_json(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "e2e.json"
    assert e2e.main(["--tiny", "--device", "cpu", "--warmup", "1", "--rep", "2", "--out", str(out)]) == 0
    _check_result(json.loads(out.read_text()))


def test_cli_bench_e2e_tiny(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "e2e.json"
    result = runner.invoke(app, ["bench", "e2e", "--tiny", "--device", "cpu", "--warmup", "1", "--rep", "1",
                                 "--densities", "0.2", "--no-dense-plan", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["dense", "plan 20%"]


def test_full_size_needs_a_gpu():
    with pytest.raises(SystemExit) as exc:
        e2e.main(["--models", "wan1.3b", "--device", "cpu"])
    assert exc.value.code == 2


@pytest.mark.parametrize("args,words", [
    (["bench", "e2e", "--help"], ["--models", "--densities", "--backend", "--warmup", "--rep", "--tiny", "--out", "32,760"]),
    (["bench", "kernels", "--help"], ["--calibrate", "--shapes", "calibrate_cost_model"]),
])
def test_bench_help(args, words):
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    for word in words:
        assert word in result.output, word


def test_kernels_calibrate_writes_a_cost_table(tmp_path, monkeypatch):
    """The --calibrate path reuses calibrate_cost_model (timed on a GPU; faked here) and saves its table."""
    from sparsevdit.bench import kernels as kb
    from sparsevdit.search.cost import CostModel

    seen = {}

    def fake(layout, heads, head_dim, **kw):
        seen.update(layout=layout, heads=heads, head_dim=head_dim, **kw)
        table = {k: [(0.1, 0.12), (1.0, 1.1)] for k in ("diagonal", "multi_diagonal", "diag+stripes", "random")}
        return CostModel("calibrated", {**table, "dense": [(1.0, 1.1)]}, "fake")

    monkeypatch.setattr(kb, "calibrate_cost_model", fake)
    out = tmp_path / "cost.json"
    [path] = kb.calibrate(["wan1.3b"], [0.1, 0.25], "triton", str(out), log=lambda *a: None)
    assert seen["heads"] == 12 and seen["layout"].num_tokens == 32_760 and seen["backend"] == "triton"
    assert seen["densities"] == (0.1, 0.25)
    loaded = CostModel.from_spec(str(path))
    assert loaded.kind == "calibrated" and loaded.head_time("diagonal", 0.1) == pytest.approx(0.12)
    with pytest.raises(ValueError):
        kb.calibrate(["wan1.3b", "wan14b"], [0.1], "triton", str(out))


@pytest.mark.gpu
def test_e2e_tiny_on_gpu(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "e2e.json"
    assert e2e.main(["--tiny", "--device", "cuda", "--warmup", "1", "--rep", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["dtype"] == "bfloat16" and data["settings"]["sdpa"] == "cudnn"


def test_e2e_tiny_compiled_outside_self_attention(tmp_path):
    """--compile: blocks compiled, self-attention eager; the dense plan still reproduces dense exactly."""
    pytest.importorskip("diffusers")
    pytest.importorskip("torch._inductor")
    out = tmp_path / "e2e.json"
    assert e2e.main(["--tiny", "--device", "cpu", "--compile", "--densities", "0.3", "--warmup", "2", "--rep", "1",
                     "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["compile"] is True and "compiled outside self-attention" in data["what"]
    _check_result(data, densities=(0.3,))


@pytest.mark.parametrize("name, tokens", [("hunyuan720p", 119_056), ("cogvideox1.5", 45_106), ("wan1.3b", 32_760)])
def test_full_size_specs_have_the_published_token_counts(name, tokens):
    spec = e2e.MODELS[name]
    assert spec.layout.num_tokens == tokens
    plan = e2e.mixed_plan(spec.signature, spec.layout, 0.1, block_size=128)
    assert abs(e2e.plan_density(plan) - 0.1) < 0.02


@pytest.mark.parametrize("name", ["tiny", "tiny-hunyuan", "tiny-cogvideox"])
def test_e2e_method_rows_on_every_family(tmp_path, name):
    pytest.importorskip("diffusers")
    out = tmp_path / "e2e.json"
    methods = ["radial", 'sliding_tile:{"tile": [1, 4, 4], "window": [3, 1, 1]}']
    argv = ["--models", name, "--device", "cpu", "--warmup", "1", "--rep", "1", "--densities", "0.3", "--out", str(out)]
    assert e2e.main(argv + [a for m in methods for a in ("--method", m)]) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [r["row"] for r in rows] == ["dense", "plan dense", "plan 30%", "method radial", "method sliding_tile"]
    assert rows[1]["rel_diff_vs_dense"] < 1e-5  # the processors reproduce the model's own attention
    family = e2e.MODELS[name].family
    assert data["models"][0]["signature"]["class_name"] == e2e.CLASSES[family]
    radial = rows[3]
    assert radial["plan"]["params"]["model_family"] == ("wan" if family == "wan" else "hunyuan")
    for r in rows[2:]:
        assert 0 < r["density"] < 1 and r["backend"] != "sdpa" and r["rel_diff_vs_dense"] > 0, r


@pytest.mark.parametrize("name", ["tiny", "tiny-hunyuan"])
def test_e2e_dynamic_method_rows_time_the_selection_per_step(tmp_path, name):
    pytest.importorskip("diffusers")
    out = tmp_path / "e2e.json"
    methods = ['topk:{"tau": null, "fraction": 0.3}', 'topk:{"tau": null, "fraction": 0.3, "reuse_every": 2}', "svg"]
    argv = ["--models", name, "--device", "cpu", "--warmup", "1", "--rep", "3", "--densities", "0.3",
            "--no-dense-plan", "--out", str(out)]
    assert e2e.main(argv + [a for m in methods for a in ("--method", m)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["dense", "plan 30%", "method topk (fraction=0.3)",
                                         "method topk (fraction=0.3, reuse_every=2)", "method svg"]
    layers = e2e.MODELS[name].signature.num_layers
    every1, every2, svg = rows[2:]
    # every forward is a new step: one selection per layer per forward, or per reuse cycle
    assert every1["timed_forwards"] == 3 and every1["selects_per_forward"] == layers
    assert every2["timed_forwards"] == 4 and every2["selects_per_forward"] == layers / 2
    for r in rows[2:]:
        assert r["selection_ms"] > 0 and r["selection_share"] == pytest.approx(r["selection_ms"] / r["ms"])
        assert r["ms"] == pytest.approx(sum(r["ms_all"]) / len(r["ms_all"]))
        assert 0 < r["density"] < 1 and r["rel_diff_vs_dense"] > 0 and r["backend"] != "sdpa", r
    assert 0.3 <= every1["density"] < 0.6  # 30% of the key blocks, plus text and partial blocks
    assert "selection ms" in e2e.format_table(json.loads(out.read_text()))


def test_e2e_method_option_is_checked(capsys):
    for bad, match in (("nope", "unknown method 'nope'"), ("radial:{x", "not JSON"), ("radial:[1]", "JSON object"),
                       ('radial:{"decay": 1}', "no parameter decay")):
        with pytest.raises(SystemExit):
            e2e.main(["--tiny", "--device", "cpu", "--method", bad])
        assert match in capsys.readouterr().err
