"""Bad input to the command line: one ``error: ...`` line on stderr naming the option, the value and what is
allowed, exit status 2, no traceback, no file written, and no model work done first (issue 14, items 5-6).

Every command is run in an empty working folder with the model's heavy entry points replaced by ones that
fail the test if reached, so validation is shown to come before any loading or sampling.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sparsevdit.models.weights import BUNDLED_DIR
import sparsevdit
from sparsevdit.cli import app
from sparsevdit.models.vdit import VDiTConfig
from sparsevdit.search.budget import BudgetSettings
from sparsevdit.search.cost import CostModel
from sparsevdit.search.sparse_vdit import SparseVDiTSettings

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
BUNDLED_PLAN = ROOT / "src" / "sparsevdit" / "models" / "plans" / "demo-cpu-16x48x48.json"
HAS_CUDA = torch.cuda.is_available()


def _reached(*args, **kwargs):
    raise AssertionError("model work was reached before the input was validated")


@pytest.fixture
def no_model_work(monkeypatch, tmp_path):
    """An empty working folder; loading weights, sampling, training or searching fails the test."""
    import sparsevdit.demo
    import sparsevdit.models.train
    import sparsevdit.models.vdit
    import sparsevdit.models.weights
    import sparsevdit.report.attention_study
    import sparsevdit.search
    import sparsevdit.search.fidelity

    for module, name in [(sparsevdit.models.weights, "load_weights"), (sparsevdit.demo, "load_weights"),
                         (sparsevdit.models.vdit, "sample"), (sparsevdit.demo, "sample"),
                         (sparsevdit.report.attention_study, "load_weights"), (sparsevdit.search, "run_search"),
                         (sparsevdit.search, "run_profile"), (sparsevdit.search.fidelity, "run_fidelity"),
                         (sparsevdit.models.train, "train")]:
        monkeypatch.setattr(module, name, _reached)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_one_error_line(result, *needles: str) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout == "", result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


NO_CUDA = pytest.mark.skipif(HAS_CUDA, reason="checks the refusal of --device cuda without a GPU")

# (arguments, strings the one error line must hold: the option, the value, what is allowed)
CASES = [
    # demo
    (["demo", "--frames", "0"], ["--frames", "0", "1<=x"]),
    (["demo", "--steps", "0"], ["--steps", "0", "1<=x"]),
    (["demo", "--seeds", "a"], ["--seeds", "'a'", "integers 0<=x"]),
    (["demo", "--seeds", "0,-1"], ["--seeds", "-1", "0<=x"]),
    (["demo", "--classes", "99"], ["--classes", "99", "0<=x<=8", "9 classes"]),
    (["demo", "--seeds", "0,1", "--classes", "1"], ["--classes", "'1'", "one class per seed"]),
    pytest.param(["demo", "--device", "cuda"], ["--device", "'cuda'", "no CUDA GPU"], marks=NO_CUDA),
    (["demo", "--device", "tpu"], ["--device", "'tpu'", "auto, cpu, cuda"]),
    (["demo", "--backend", "nosuch"], ["--backend", "'nosuch'", "auto", "reference"]),
    (["demo", "--height", "30"], ["--height", "30", "multiple of the model's patch size 4"]),
    (["demo", "--width", "2"], ["--width", "2", "multiple of the model's patch size 4"]),
    (["demo", "--block-size", "0"], ["--block-size", "0", "1<=x"]),
    # generate
    (["generate", "--frames", "0"], ["--frames", "0", "1<=x"]),
    (["generate", "--steps", "-1"], ["--steps", "-1", "1<=x"]),
    (["generate", "--guidance", "nan"], ["--guidance", "nan", "finite", "0<=x"]),
    (["generate", "--guidance", "inf"], ["--guidance", "inf", "finite"]),
    (["generate", "--guidance", "-1"], ["--guidance", "-1", "0<=x"]),
    (["generate", "--dtype", "int8"], ["--dtype", "'int8'", "auto, float32, float16, bfloat16"]),
    (["generate", "--fps", "-5"], ["--fps", "-5", "1<=x"]),
    (["generate", "--seed", "-1"], ["--seed", "-1", "0<=x"]),
    (["generate", "--height", "30"], ["--height", "30", "patch size 4"]),
    (["generate", "--out", "video.avi"], ["--out", "video.avi", ".mp4 or .gif"]),
    (["generate", "--backend", "nosuch"], ["--backend", "'nosuch'", "reference"]),
    # search
    (["search", "--max-time", "0"], ["--max-time", "0", "0<x<=1"]),
    (["search", "--max-time", "nan"], ["--max-time", "nan", "finite"]),
    (["search", "--target-psnr", "nan"], ["--target-psnr", "nan", "finite", "0<x"]),
    (["search", "--max-rel-error", "-1"], ["--max-rel-error", "-1", "0<x"]),
    (["search", "--psnr-seeds", "3,4"], ["--psnr-seeds", "'3,4'", "give --target-psnr too"]),
    (["search", "--target-psnr", "25", "--psnr-seeds", "3,3"], ["--psnr-seeds", "'3,3'", "distinct seeds"]),
    (["search", "--target-psnr", "25", "--psnr-seeds", "-3"], ["--psnr-seeds", "-3", "0<=x"]),
    (["search", "--algorithm", "sparse-vdit", "--psnr-seeds", "3"], ["--psnr-seeds", "an option of --algorithm budget only"]),
    (["search", "--mode-density", "2"], ["--mode-density", "2", "0<x<=1"]),
    (["search", "--lambda", "-1"], ["--lambda", "-1", "0<=x"]),
    (["search", "--epsilon", "0"], ["--epsilon", "0", "0<x"]),
    (["search", "--cost", "flops:-5"], ["--cost", "flops:-5", ">= 0"]),
    (["search", "--cost", "flops:nan"], ["--cost", "flops:nan", ">= 0"]),
    (["search", "--cost", "nosuch.json"], ["--cost", "nosuch.json", "flops | flops:OVERHEAD"]),
    (["search", "--dense-layers", "99"], ["--dense-layers", "99", "0<=x<=7", "8 layers"]),
    (["search", "--dense-warmup-steps", "-2"], ["--dense-warmup-steps", "-2", "0<=x"]),
    (["search", "--dense-warmup-steps", "16", "--steps", "16"], ["--dense-warmup-steps", "16", "fewer than the 16"]),
    (["search", "--rows-per-block", "-1"], ["--rows-per-block", "-1", "0<=x"]),
    (["search", "--block-size", "0"], ["--block-size", "0", "1<=x"]),
    (["search", "--step-ranges", "-1"], ["--step-ranges", "-1", "0<=x"]),
    (["search", "--backend", "nosuch"], ["--backend", "'nosuch'", "reference"]),
    (["search", "--algorithm", "nope"], ["--algorithm", "'nope'", "budget, sparse-vdit"]),
    (["search", "--guidance", "nan"], ["--guidance", "nan", "finite"]),
    (["search", "--classes", "9"], ["--classes", "9", "0<=x<=8"]),
    (["search", "--height", "18"], ["--height", "18", "patch size 4"]),
    (["search", "--profile", "missing.pt"], ["missing.pt"]),
    # profile, cost, fidelity
    (["profile", "--rows-per-block", "-1"], ["--rows-per-block", "-1", "0<=x"]),
    (["profile", "--steps", "0"], ["--steps", "0", "1<=x"]),
    (["cost", "--source", "flops:-5"], ["--source", "flops:-5", ">= 0"]),
    (["cost", "--frames", "0"], ["--frames", "0", "1<=x"]),
    (["cost", "--backend", "nosuch"], ["--backend", "'nosuch'"]),
    (["fidelity", "--steps", "0"], ["--steps", "0", "1<=x"]),
    (["fidelity", "--calib-seeds", "1,x"], ["--calib-seeds", "'1,x'", "integers"]),
    (["fidelity", "--plot", "plot.txt"], ["--plot", "plot.txt", ".png"]),
    (["fidelity", "--height", "30"], ["--height", "30", "patch size 4"]),
    (["fidelity", "--calib-seeds", "1,2", "--eval-seeds", "2,3"], ["--eval-seeds", "never saw", "[2]"]),
    (["fidelity", "--grid", "{\"budgt\": []}"], ["--grid", "unknown fidelity grid keys", "budget_sensitivity"]),
    (["fidelity", "--grid", "{\"svg\": [}"], ["--grid", "valid JSON"]),
    (["fidelity", "--grid", "no-such-grid.json"], ["--grid", "no-such-grid.json", "JSON object"]),
    (["fidelity", "--grid", "{\"budget\": [{\"max_time\": 2}]}"], ["--grid", "max_time", "[0, 1]"]),
    (["search", "--step-sensitivity", "--algorithm", "sparse-vdit"], ["--step-sensitivity", "budget"]),
    (["train", "--schedule", "16x128:4"], ["--schedule", "FRAMESxHEIGHTxWIDTH:BATCH"]),
    (["train", "--schedule", "16x126x128:4"], ["--schedule", "patch size 4"]),
    (["train", "--class-weights", "ball=3"], ["--class-weights", "NAME one of", "bounce"]),
    (["train", "--class-weights", "bounce=-1"], ["--class-weights", "weight >= 0 for bounce"]),
    (["train", "--init-weights", "no-such-folder"], ["--init-weights", "no-such-folder", "weights folder"]),
    (["train", "--init-weights", str(BUNDLED_DIR), "--dim", "256"], ["--dim", "256", "drop --dim"]),
    (["demo", "--compile", "--no-warmup"], ["--compile needs the warm-up"]),
    (["demo", "--dtype", "float64"], ["--dtype", "float64", "auto, float32 or bfloat16"]),
    # attention-study
    (["attention-study", "--steps", "0"], ["--steps", "0", "1<=x"]),
    (["attention-study", "--frames", "0"], ["--frames", "0", "1<=x"]),
    (["attention-study", "--size", "30"], ["--height", "30", "patch size 4"]),
    (["attention-study", "--class", "99"], ["--class", "99", "0<=x<=8"]),
    (["attention-study", "--block-size", "0"], ["--block-size", "0", "1<=x"]),
    (["attention-study", "--seed", "-3"], ["--seed", "-3", "0<=x"]),
    # patterns
    (["patterns", "show", "diagonal", "-f", "2", "--height", "2", "--width", "2", "-p", "seed=1e999"],
     ["--param", "seed=1e999", "finite"]),
    (["patterns", "show", "diagonal", "-f", "2", "--height", "2", "--width", "2", "-p", "width=NaN"],
     ["--param", "width=NaN", "finite"]),
    (["patterns", "show", "diagonal", "-f", "0", "--height", "2", "--width", "2"], ["--frames", "0", "1<=x"]),
    (["patterns", "show", "diagonal", "-f", "2", "--height", "2", "--width", "2", "-b", "0"], ["--block-size", "0", "1<=x"]),
    (["patterns", "show", "diagonal", "-f", "2", "--height", "2", "--width", "2", "--text", "-1"], ["--text", "-1", "0<=x"]),
    (["patterns", "show", "diagonal", "-f", "2", "--height", "2", "--width", "2", "--png", "mask.jpg"], ["--png", "mask.jpg", ".png"]),
    (["patterns", "show", "diagonal", "-f", "2", "--height", "2", "--width", "2", "-p", "size=3"], ["no parameter size"]),
    (["patterns", "study", "--seed", "-1"], ["--seed", "-1", "0<=x"]),
    # train
    (["train", "--steps", "0"], ["--steps", "0", "1<=x"]),
    (["train", "--batch", "0"], ["--batch", "0", "1<=x"]),
    (["train", "--lr", "nan"], ["--lr", "nan", "finite", "0<x"]),
    (["train", "--lr", "0"], ["--lr", "0", "0<x"]),
    (["train", "--max-minutes", "-1"], ["--max-minutes", "-1", "0<x"]),
    (["train", "--size", "30"], ["--size", "30", "patch size 4"]),
    (["train", "--dim", "100", "--heads", "6"], ["--dim", "100", "multiple of --heads 6"]),
    # unknown command, unknown or missing option
    (["nosuch"], ["No such command", "nosuch"]),
    (["--bogus"], ["No such option", "--bogus"]),
    (["demo", "--bogus"], ["No such option", "--bogus"]),
    (["patterns", "show"], ["Missing argument", "name"]),
]


@pytest.mark.parametrize("args, needles", CASES)
def test_bad_option_is_one_error_line_and_nothing_else(no_model_work, args, needles):
    result = runner.invoke(app, args, terminal_width=100)
    assert_one_error_line(result, *needles)
    assert files_under(no_model_work) == [], "a refused command wrote files"


def test_an_out_folder_that_is_a_file_is_refused(no_model_work):
    (no_model_work / "taken").write_text("x")
    for args in (["demo", "--out", "taken"], ["attention-study", "--out", "taken"], ["patterns", "study", "-o", "taken"]):
        assert_one_error_line(runner.invoke(app, args), "--out", "taken", "not a folder")
    (no_model_work / "folder").mkdir()
    for args in (["search", "--out", "folder"], ["profile", "--out", "folder"], ["generate", "--out", "folder.mp4"]):
        if args[0] == "generate":
            (no_model_work / "folder.mp4").mkdir()
        assert_one_error_line(runner.invoke(app, args), "--out", "folder", "folder")
    assert files_under(no_model_work) == ["folder", "folder.mp4", "taken"]


def test_patterns_show_png_into_a_folder_is_an_error_not_a_stray_file(no_model_work):
    (no_model_work / "pics").mkdir()
    result = runner.invoke(app, ["patterns", "show", "diagonal", "-f", "2", "--height", "4", "--width", "4",
                                 "--png", "pics"])
    assert_one_error_line(result, "--png", "pics", "is a folder")
    assert files_under(no_model_work) == ["pics"]


def test_cost_source_that_is_a_plan_is_refused(no_model_work):
    shutil.copy(BUNDLED_PLAN, no_model_work / "plan.json")
    result = runner.invoke(app, ["cost", "--source", "plan.json"])
    assert_one_error_line(result, "--source", "plan.json", "neither a cost table", "kernel benchmark")
    result = runner.invoke(app, ["search", "--cost", "measured:plan.json"])
    assert_one_error_line(result, "--cost", "plan.json", "kernel benchmark")
    assert files_under(no_model_work) == ["plan.json"]


def test_a_malformed_plan_is_one_error_line(no_model_work):
    (no_model_work / "plan.json").write_text("{not json")
    for args in (["demo", "--plan", "plan.json"], ["generate", "--plan", "plan.json"]):
        assert_one_error_line(runner.invoke(app, args), "plan.json")
    assert files_under(no_model_work) == ["plan.json"]


# --------------------------------------------------------------------------------------------------
# a plan that does not fit the run is refused before any sampling
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def no_sampling(monkeypatch, tmp_path):
    import sparsevdit.demo
    import sparsevdit.models.vdit

    monkeypatch.setattr(sparsevdit.models.vdit, "sample", _reached)
    monkeypatch.setattr(sparsevdit.demo, "sample", _reached)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_demo_refuses_a_plan_of_another_clip_size_before_sampling(no_sampling):
    shutil.copy(BUNDLED_PLAN, no_sampling / "plan.json")  # made for 16 x 48 x 48 px
    result = runner.invoke(app, ["demo", "--plan", "plan.json", "--device", "cpu", "--frames", "4", "--height", "24"])
    assert_one_error_line(result, "layout", "16x12x12", "4x6x6")
    result = runner.invoke(app, ["generate", "--plan", "plan.json", "--device", "cpu", "--frames", "4", "--height", "24", "--width", "24",
                                 "--out", "v.gif"])
    assert_one_error_line(result, "layout", "16x12x12", "4x6x6")
    assert files_under(no_sampling) == ["plan.json"]


def test_demo_refuses_a_plan_for_another_model_before_sampling(no_sampling):
    data = json.loads(BUNDLED_PLAN.read_text())
    data["model"]["num_heads"] = 12
    (no_sampling / "plan.json").write_text(json.dumps(data))
    result = runner.invoke(app, ["demo", "--plan", "plan.json", "--device", "cpu"])
    line = assert_one_error_line(result, "12")
    assert "num_heads" in line or "heads" in line
    assert files_under(no_sampling) == ["plan.json"]


def test_apply_refuses_an_unknown_backend_at_apply():
    from sparsevdit.kernels.registry import BackendError
    from sparsevdit.models.vdit import VDiTConfig, VideoDiT
    from sparsevdit.plan import SparsityPlan

    model = VideoDiT(VDiTConfig(dim=384, depth=8, heads=6, num_classes=9))
    plan = SparsityPlan.load(BUNDLED_PLAN)
    with pytest.raises(BackendError, match="nosuch.*available: auto, .*reference"):
        sparsevdit.apply(model, plan, backend="nosuch")
    assert not sparsevdit.integrations.is_applied(model)


# --------------------------------------------------------------------------------------------------
# errors that are bugs keep their traceback
# --------------------------------------------------------------------------------------------------
def test_a_bug_is_not_turned_into_an_error_line(monkeypatch):
    import sparsevdit.models.data

    def broken(i):
        raise TypeError("a bug")

    monkeypatch.setattr(sparsevdit.models.data, "caption_for", broken)
    result = runner.invoke(app, ["classes"])
    assert result.exit_code == 1
    assert isinstance(result.exception, TypeError)
    assert "error: " not in result.stderr


def test_library_errors_meant_for_users_become_one_line(no_model_work, monkeypatch):
    from sparsevdit.kernels.registry import BackendError
    from sparsevdit.plan import PlanError

    import sparsevdit.models.data

    for exc in (PlanError("layout", "a", "b"), BackendError("no backend can run this"), ValueError("bad value")):
        def raising(i, exc=exc):
            raise exc

        monkeypatch.setattr(sparsevdit.models.data, "caption_for", raising)
        assert_one_error_line(runner.invoke(app, ["classes"]), str(exc).split()[0])


def test_sparsevdit_traceback_shows_a_user_error_as_raised(monkeypatch):
    import sparsevdit.models.data

    def raising(i):
        raise ValueError("bad value")

    monkeypatch.setattr(sparsevdit.models.data, "caption_for", raising)
    monkeypatch.setenv("SPARSEVDIT_TRACEBACK", "1")
    result = runner.invoke(app, ["classes"])
    assert isinstance(result.exception, ValueError) and result.exit_code == 1


# --------------------------------------------------------------------------------------------------
# the real console script: stderr only, exit 2
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [(["generate", "--guidance", "nan"], "--guidance"),
                                          (["search", "--max-time", "0"], "--max-time")])
def test_python_m_sparsevdit_prints_one_line_on_stderr(tmp_path, args, needle):
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "sparsevdit", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# demo: an interrupted run leaves the old outputs as they were, and no temporary files
# --------------------------------------------------------------------------------------------------
def _fake_sample(model, classes, *, frames, height, width, seeds, sampler, on_step=None, progress=None):
    gen = torch.Generator().manual_seed(sum(seeds))
    return torch.rand(len(seeds), 3, frames, height, width, generator=gen) * 2 - 1


def test_demo_interrupted_while_writing_leaves_no_mix_and_no_temp_files(tmp_path, monkeypatch):
    import sparsevdit.demo as demo
    import sparsevdit.video_io

    out = tmp_path / "demo"
    out.mkdir()
    (out / "report.json").write_text('{"old": true}\n')
    (out / "seed0_dense.gif").write_bytes(b"old video")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    written = []
    real_write_video = sparsevdit.video_io.write_video

    def write_then_count(frames, path, fps=8):
        written.append(real_write_video(frames, path, fps=fps))
        return written[-1]

    def interrupted(*args, **kwargs):
        assert written, "the interrupt should come after some videos are written"
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "sample", _fake_sample)
    monkeypatch.setattr(demo, "write_video", write_then_count)
    monkeypatch.setattr(demo, "frame_grid", interrupted)
    monkeypatch.setattr(demo, "mp4_writer_available", lambda: False)
    settings = demo.DemoSettings(2, 16, 16, 2, 3.0, (0,), (7,), 16, "auto", "cpu", "float32")
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(out, device="cpu", settings=settings, use_bundled_plan=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing new beside the old report
    assert [p for p in tmp_path.rglob("*") if ".tmp" in p.name] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]

    # the same run, not interrupted, replaces the outputs together
    monkeypatch.setattr(demo, "frame_grid", sparsevdit.video_io.frame_grid)
    report = demo.run_demo(out, device="cpu", settings=settings, use_bundled_plan=False)
    assert json.loads((out / "report.json").read_text())["files"] == report["files"]
    assert (out / "seed0_dense.gif").read_bytes() != b"old video"
    assert [p for p in tmp_path.rglob("*") if ".tmp" in p.name] == []


def test_write_video_leaves_no_temp_file_when_it_fails(tmp_path, monkeypatch):
    import imageio.v2 as imageio

    from sparsevdit.video_io import write_video

    def broken(path, frames, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(imageio, "mimsave", broken)
    (tmp_path / "v.gif").write_bytes(b"old")
    with pytest.raises(OSError):
        write_video(torch.zeros(2, 8, 8, 3, dtype=torch.uint8).numpy(), tmp_path / "v.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif"]
    assert (tmp_path / "v.gif").read_bytes() == b"old"
    with pytest.raises(ValueError, match="fps"):
        write_video(torch.zeros(2, 8, 8, 3, dtype=torch.uint8).numpy(), tmp_path / "w.gif", fps=0)


# --------------------------------------------------------------------------------------------------
# the library refuses the same values when called directly
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: BudgetSettings(max_time=float("nan")),
    lambda: BudgetSettings(target_psnr=-1.0),
    lambda: BudgetSettings(max_time=0.5, psnr_seeds=(1, 2)),  # seeds of a target that is not there
    lambda: BudgetSettings(target_psnr=25.0, psnr_seeds=(1, 1)),
    lambda: BudgetSettings(target_psnr=25.0, psnr_seeds=(-1,)),
    lambda: BudgetSettings(max_time=0.5, dense_warmup_steps=-2),
    lambda: SparseVDiTSettings(lam=float("nan")),
    lambda: SparseVDiTSettings(mode_density=2.0),
    lambda: CostModel.from_spec("flops:-5"),
    lambda: CostModel.measured(BUNDLED_PLAN),  # a plan is no kernel benchmark result
    lambda: VDiTConfig().layout(0, 48, 48),  # 0 frames was the training size, silently
    lambda: VDiTConfig().layout(16, 0, 48),
])
def test_library_refuses_the_same_values(make):
    with pytest.raises(ValueError):
        make()
