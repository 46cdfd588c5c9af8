"""Search runners on real diffusers pipelines built offline (tiny:wan, tiny:cogvideox, tiny:hunyuan): the
CLI from profile to generate, the profile's errors against actually running the candidates, and plan
steps under diffusers' FirstBlockCache."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import sparsevdit as sv  # noqa: E402
from sparsevdit.integrations import tiny_pipelines  # noqa: E402
from sparsevdit.plan import PlanError, SparsityPlan  # noqa: E402
from sparsevdit.search import run_profile  # noqa: E402
from sparsevdit.search.runners import RunnerError, as_runner  # noqa: E402
from sparsevdit.search.runners.pipeline import PipelineCalibration  # noqa: E402

FAMILIES = tiny_pipelines.FAMILIES


def calibration(family: str, **over) -> PipelineCalibration:
    size = tiny_pipelines.TINY_SIZES[family]
    kw = dict(prompts=("a red ball bounces on the grass",), seeds=(0,), frames=size["frames"], height=size["height"],
              width=size["width"], steps=3, block_size=16, max_sequence_length=size["max_sequence_length"],
              call=dict(tiny_pipelines.TINY_CALL.get(family, {})))
    return PipelineCalibration(**{**kw, **over})


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def pipe(family):
    return tiny_pipelines.build(family)


def test_runner_layout_is_what_the_transformer_attends_over(family, pipe):
    runner = as_runner(pipe, calibration(family))
    assert runner.name == family and runner.signature().class_name == type(pipe.transformer).__name__
    seen = []

    def capture(layer, step, q, k, v):
        seen.append((layer, step, q.shape[2]))
        return None

    video = runner.sample(capture=capture)
    assert video.shape[:3] == (1, 3, calibration(family).frames) and float(video.abs().max()) <= 1.0
    assert {n for *_, n in seen} == {runner.layout().num_tokens}
    layers = runner.signature().num_layers
    assert {(layer, step) for layer, step, _ in seen} == {(l, s) for l in range(layers) for s in range(3)}
    # dense capture reproduces the pipeline's own output (same noise)
    torch.testing.assert_close(video, runner.sample(), atol=1e-5, rtol=1e-5)


def test_bad_calibrations_are_refused_with_the_fix(family, pipe):
    with pytest.raises(RunnerError, match="frames must be 1 \\+ a multiple of 4"):
        as_runner(pipe, calibration(family, frames=8))
    with pytest.raises(RunnerError, match="height must be a multiple of"):
        as_runner(pipe, calibration(family, height=100))
    with pytest.raises(RunnerError, match="prompts"):
        calibration(family, prompts=("",))
    with pytest.raises(RunnerError, match="CalibrationConfig|PipelineCalibration"):
        from sparsevdit.search import CalibrationConfig

        as_runner(pipe, CalibrationConfig())


def test_profile_error_equals_running_the_candidate(family, pipe):
    """The profile's relative error of a candidate at (step, layer, head) equals the error of actually
    running that candidate's mask (reference backend) on the same q, k, v, summed over the calls."""
    runner = as_runner(pipe, calibration(family, steps=2))
    prof = run_profile(runner, rows_per_block=None, progress=False)
    layout, bs = runner.layout(), runner.block_size
    from sparsevdit.search.candidates import build

    picks = [c for c, cand in enumerate(prof.candidates) if not cand.per_head][:3]
    sums = {}

    def capture(layer, step, q, k, v):
        dense = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
        for c in picks:
            pat = build(prof.candidates[c], layout, bs)
            out = sv.sparse_attention(q.float(), k.float(), v.float(), [pat] * q.shape[1], layout=layout, backend="reference")
            sq = (out - dense).pow(2).sum((0, 2, 3)).double()
            n2 = dense.pow(2).sum((0, 2, 3)).double()
            a, b = sums.get((step, layer, c), (0, 0))
            sums[(step, layer, c)] = (a + sq, b + n2)
        return None

    runner.sample(capture=capture)
    for (step, layer, c), (sq, n2) in sums.items():
        torch.testing.assert_close(prof.rel_err[step, layer, :, c].double(), (sq / n2).sqrt(), atol=2e-4, rtol=2e-3)
    assert any(float(prof.rel_err[..., c].max()) > 1e-3 for c in picks)  # the candidates are not all dense


def _cli(args):
    from typer.testing import CliRunner

    from sparsevdit.cli import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + (repr(res.exception) if res.exception else "")
    return res.output


def test_profile_search_generate_on_a_tiny_pipeline(family, tmp_path):
    name = f"tiny:{family}"
    prof, budget, vdit = tmp_path / "p.pt", tmp_path / "budget.json", tmp_path / "vdit.json"
    common = ["--pipeline", name, "--device", "cpu", "--steps", "3"]
    _cli(["profile", *common, "--out", str(prof)])
    _cli(["search", "--algorithm", "budget", "--target-psnr", "30", "--profile", str(prof), "--pipeline", name,
          "--device", "cpu", "--out", str(budget)])
    _cli(["search", "--algorithm", "sparse-vdit", "--lambda", "0.0", "--epsilon", "1e9", *common, "--out", str(vdit)])
    for path in (budget, vdit):
        plan = SparsityPlan.load(path)
        assert plan.model.class_name == type(tiny_pipelines.build(family).transformer).__name__
        assert plan.metadata["calibration"]["kind"] == "pipeline"
    assert SparsityPlan.load(vdit).entries  # epsilon this large keeps no head dense
    video = tmp_path / "v.gif"
    out = _cli(["generate", "--pipeline", name, "--plan", str(vdit), "--device", "cpu", "--steps", "3", "--out", str(video)])
    assert video.exists() and video.stat().st_size > 0, out


def test_target_psnr_on_other_seeds_of_a_pipeline(tmp_path):
    runner = as_runner(tiny_pipelines.build("wan"), calibration("wan", steps=2))
    other = runner.with_seeds((5, 6))
    assert type(other) is type(runner) and other.calib.seeds == (5, 6)
    assert other.calib.prompts == runner.calib.prompts and other.calib.steps == 2
    prof, plan_path = tmp_path / "p.pt", tmp_path / "plan.json"
    common = ["--pipeline", "tiny:wan", "--device", "cpu", "--steps", "2"]
    _cli(["profile", *common, "--out", str(prof)])
    _cli(["search", "--algorithm", "budget", "--target-psnr", "30", "--psnr-seeds", "5,6", "--profile", str(prof),
          "--pipeline", "tiny:wan", "--device", "cpu", "--out", str(plan_path)])
    md = SparsityPlan.load(plan_path).metadata
    assert md["settings"]["psnr_seeds"] == [5, 6] and md["bisection"]


def test_a_plan_of_one_pipeline_is_refused_by_another(tmp_path):
    from sparsevdit.search import CostModel, run_search

    wan = tiny_pipelines.build("wan")
    plan = run_search("sparse-vdit", as_runner(wan, calibration("wan", steps=2)), None, cost=CostModel.flops(),
                      progress=False, lam=0.0, epsilon=1e9)
    cog = tiny_pipelines.build("cogvideox")
    with pytest.raises(PlanError, match="WanTransformer3DModel"):
        sv.apply(cog, plan)


def test_plan_steps_are_counted_under_first_block_cache():
    """diffusers' FirstBlockCache skips blocks on cached steps; the plan's step is still the pipeline's
    denoising step (two guidance forwards per step for Wan)."""
    from diffusers import FirstBlockCacheConfig

    from sparsevdit.integrations.diffusers import step_history

    pipe = tiny_pipelines.build("wan")
    runner = as_runner(pipe, calibration("wan", steps=4, guidance=5.0, negative_prompt="blurry"))
    plan = SparsityPlan.uniform(runner.signature(), runner.layout(), "diagonal", {"width": 64}, block_size=16)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.5))
    try:
        sv.apply(pipe, plan)
        runner._one("a red ball bounces on the grass", 0, None)
        history = step_history(pipe)
    finally:
        sv.remove(pipe)
        pipe.transformer.disable_cache()
    assert history == [0, 0, 1, 1, 2, 2, 3, 3]


def test_profile_file_round_trips_a_pipeline_calibration(tmp_path):
    from sparsevdit.search import Profile

    runner = as_runner(tiny_pipelines.build("hunyuan"), calibration("hunyuan", steps=2))
    prof = run_profile(runner, rows_per_block=4, progress=False)
    prof.save(tmp_path / "p.pt")
    back = Profile.load(tmp_path / "p.pt")
    assert back.calib == runner.calib and back.layout == runner.layout() and back.settings["runner"] == "hunyuan"
    assert json.dumps(back.calib.to_dict())  # plain data


def test_the_registry_names_every_family_and_refuses_other_objects():
    from sparsevdit.search.runners import available_runners, runner_class

    assert available_runners() == ["bundled", "cogvideox", "hunyuan", "wan"]
    with pytest.raises(RunnerError, match="no runner takes a object"):
        as_runner(object())
    with pytest.raises(RunnerError, match="registered: bundled, cogvideox, hunyuan, wan"):
        runner_class("ltx")


@pytest.mark.parametrize("name", ["tiny", "tiny-hunyuan"])
def test_profile_step_bench_measures_every_layer_on_cpu(name):
    from sparsevdit.bench import profile_step

    (row,) = profile_step.run([name], "cpu", 4, log=lambda *a: None)
    assert row["layers_measured"] == row["layers"] and row["profiled_ms"] > 0 and row["announced_gib"] > 0


def test_latents_can_be_what_is_compared(tmp_path):
    runner = as_runner(tiny_pipelines.build("wan"), calibration("wan", steps=2, output="latents"))
    out = runner.sample()
    assert out.shape[1] == 16 and out.shape[2] == 5  # the transformer's 16 latent channels, 5 latent frames
    assert torch.equal(out, runner.sample())  # the same noise
    with pytest.raises(RunnerError, match="output must be one of video, latents"):
        calibration("wan", output="pixels")
    prof = tmp_path / "p.pt"
    _cli(["profile", "--pipeline", "tiny:wan", "--device", "cpu", "--steps", "2", "--compare", "latents", "--out", str(prof)])
    from sparsevdit.search import Profile

    assert Profile.load(prof).calib.output == "latents"


def test_pipeline_options_are_checked_before_any_model_work():
    from typer.testing import CliRunner

    from sparsevdit.cli import app

    for args, needle in ((["profile", "--compare", "latents"], "--compare"),
                         (["profile", "--prompt", "a cat"], "an option of diffusers pipelines"),
                         (["search", "--pipeline", "tiny:ltx"], "tiny:wan"),
                         (["profile", "--pipeline", "tiny:wan", "--compare", "pixels"], "video or latents")):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and needle in " ".join(res.output.split()), (args, res.output)
