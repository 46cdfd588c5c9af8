"""The command line: listing, drawing, errors, demo."""

import json

import pytest
from typer.testing import CliRunner

from sparsevdit import patterns as P
from sparsevdit.cli import app

runner = CliRunner()

SHOW_PARAMS = {
    "dense": [],
    "skip": [],
    "diagonal": ["-p", "width=512"],
    "multi_diagonal": ["-p", "width=256"],
    "vertical_stripe": ["-p", "sink_frames=1"],
    "union": ["-p", 'patterns=["diagonal", {"name": "vertical_stripe", "params": {"sink_frames": 1}}]'],
    "random_blocks": ["-p", "density=0.3"],
}


def test_patterns_lists_every_pattern_with_parameters():
    result = runner.invoke(app, ["patterns"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ("dense", "skip", "diagonal", "multi_diagonal", "vertical_stripe", "union"):
        assert name in result.output
    assert "sink_frames" in result.output and "width" in result.output


@pytest.mark.parametrize("name", P.available())
def test_patterns_show_writes_png(tmp_path, name):
    png = tmp_path / f"{name}.png"
    args = ["patterns", "show", name, "--frames", "5", "--height", "12", "--width", "13", "--text", "40",
            "--text-position", "suffix", "--block-size", "64", "--png", str(png)] + SHOW_PARAMS[name]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "density" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["patterns", "show", "nope", "--frames", "2", "--height", "2", "--width", "2"], "unknown pattern 'nope'"),
        (["patterns", "show", "diagonal", "--frames", "0", "--height", "2", "--width", "2"], "frames"),
        (["patterns", "show", "diagonal", "--frames", "2", "--height", "2", "--width", "2", "-p", "size=3"], "no parameter size"),
        (["patterns", "show", "diagonal", "--frames", "2", "--height", "2", "--width", "2", "-p", "width"], "key=value"),
        (["patterns", "show", "diagonal", "--frames", "2", "--height", "2", "--width", "2", "--text", "3", "--text-position", "middle"], "text_position"),
    ],
)
def test_patterns_show_errors_are_clear(args, message):
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 2
    assert message in result.output


def test_every_command_has_help():
    for args in (["--help"], ["patterns", "--help"], ["patterns", "show", "--help"], ["demo", "--help"], ["bench", "--help"]):
        result = runner.invoke(app, args, terminal_width=200)
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output


def test_pattern_study_writes_report(tmp_path):
    result = runner.invoke(app, ["patterns", "study", "--out", str(tmp_path), "--device", "cpu"], terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.html").exists() and (tmp_path / "attention_maps.png").exists()
    choice = report["choice_per_head"]
    # The synthetic heads have the structures the patterns are made for.
    assert choice["spatial"]["pattern"].startswith(("diagonal", "multi_diagonal"))
    assert choice["temporal"]["pattern"].startswith("multi_diagonal")
    assert all(c["rel_error"] <= report["error_budget"] for c in choice.values())
    for cand in report["candidates"]:
        assert (tmp_path / cand["png"]).exists()


def test_demo_on_bundled_model_writes_videos_and_report(tmp_path):
    args = ["demo", "--out", str(tmp_path), "--device", "cpu", "--frames", "4", "--height", "24", "--steps", "2",
            "--seeds", "0", "--classes", "7", "--block-size", "16"]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    for key in ("psnr", "ssim", "attention_density", "dense_seconds", "sparse_seconds", "device", "settings"):
        assert key in report
    assert 0 < report["attention_density"] < 1
    for name in ("dense", "sparse", "side_by_side"):
        for ext in ("mp4", "gif"):
            assert (tmp_path / f"seed0_{name}.{ext}").stat().st_size > 0
    assert (tmp_path / "frames.png").exists() and (tmp_path / "report.html").exists()


def test_demo_refuses_bad_sizes(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--device", "cpu", "--height", "30"], terminal_width=200)
    assert result.exit_code == 2
    assert "multiple" in result.output


def test_bundled_plan_matches_only_the_default_cpu_demo():
    """The shipped searched plan is picked for the default CPU demo size and for nothing else."""
    from sparsevdit.demo import bundled_plan, default_settings
    from sparsevdit.models.weights import load_weights

    s = default_settings("cpu")
    model = load_weights(None, device="cpu")
    plan = bundled_plan(model, model.cfg.layout(s.frames, s.height, s.width), s.block_size, s.steps)
    assert plan is not None and plan.metadata["algorithm"] == "budget" and plan.source.startswith("bundled ")
    assert bundled_plan(model, model.cfg.layout(4, 24, 24), s.block_size, s.steps) is None
    assert bundled_plan(model, model.cfg.layout(s.frames, s.height, s.width), s.block_size, s.steps + 1) is None


def test_demo_writes_gifs_only_without_ffmpeg(tmp_path, monkeypatch):
    import sparsevdit.demo as demo_module

    monkeypatch.setattr(demo_module, "mp4_writer_available", lambda: False)
    args = ["demo", "--out", str(tmp_path), "--device", "cpu", "--frames", "4", "--height", "24", "--steps", "1",
            "--seeds", "0", "--classes", "7", "--block-size", "16"]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "GIFs only" in result.output
    assert (tmp_path / "seed0_dense.gif").exists() and not list(tmp_path.glob("*.mp4"))


def test_demo_times_each_step_and_reports_the_warm_up_apart(tmp_path):
    args = ["demo", "--out", str(tmp_path), "--device", "cpu", "--frames", "4", "--height", "24", "--steps", "3",
            "--seeds", "0", "--classes", "7", "--block-size", "16", "--warmup"]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    timing = json.loads((tmp_path / "report.json").read_text())["timing"]
    for name in ("dense", "sparse"):
        side = timing[name]
        assert len(side["step_ms"]) == 3 and all(ms > 0 for ms in side["step_ms"])
        assert side["warmup_seconds"] > 0 and side["median_step_ms"] == sorted(side["step_ms"])[1]
        assert sum(side["step_ms"]) / 1000 <= side["seconds"] * 1.01
    assert timing["speedup_per_step"] == timing["dense"]["median_step_ms"] / timing["sparse"]["median_step_ms"]
    # the console wraps long lines wherever the timings' digits put the break
    assert "warm-up (not timed)" in " ".join(result.output.split()) and not timing["compiled"]


def test_demo_compile_needs_the_warm_up(tmp_path):
    from sparsevdit.demo import DemoSettings, default_settings

    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--device", "cpu", "--compile", "--no-warmup"],
                           terminal_width=200)
    assert result.exit_code == 2 and "--compile needs the warm-up" in result.output
    with pytest.raises(ValueError, match="needs warmup=True"):
        DemoSettings(**{**default_settings("cpu").__dict__, "compile": True, "warmup": False})
    assert default_settings("cuda").warmup and not default_settings("cpu").warmup


def test_demo_report_has_pictures_and_the_fidelity_curves(tmp_path):
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"rows": [
        {"method": "budget", "label": "a", "density": 0.3, "psnr": 25.0, "ssim": 0.8, "relative_time_flops": 0.35},
        {"method": "uniform-diag", "label": "b", "density": 0.2, "psnr": 15.0, "ssim": 0.5, "relative_time_flops": 0.25}]}))
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--device", "cpu", "--frames", "4", "--height", "24", "--steps", "2",
            "--seeds", "0", "--classes", "7", "--block-size", "16", "--fidelity", str(study)]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["pictures"]) == {"attention_maps", "fidelity", "fidelity_time"}  # fixed mix: no plan picture
    page = (out / "report.html").read_text()
    for name in report["pictures"].values():
        assert (out / name).stat().st_size > 0 and name in page and name in report["files"]
    assert "http://" not in page and "https://" not in page
    broken = tmp_path / "broken.json"
    broken.write_text('{"rows": [{"psnr": 1}]}')
    result = runner.invoke(app, args[:-1] + [str(broken)], terminal_width=200)
    assert result.exit_code == 2 and "a fidelity study" in result.output


def test_default_dtype_is_bfloat16_on_cuda_and_on_cpus_that_measure_it_faster(monkeypatch):
    from sparsevdit import dtypes

    assert dtypes.default_dtype("cuda") == "bfloat16"
    monkeypatch.setattr(dtypes, "cpu_bfloat16_speedup", lambda: 2.9)
    assert dtypes.default_dtype("cpu") == "bfloat16"
    monkeypatch.setattr(dtypes, "cpu_bfloat16_speedup", lambda: 0.4)  # emulated bfloat16
    assert dtypes.default_dtype("cpu") == "float32"
    from sparsevdit.demo import default_settings

    assert default_settings("cpu").dtype == "float32"


def test_demo_and_generate_take_a_method(tmp_path):
    args = ["demo", "--out", str(tmp_path / "d"), "--device", "cpu", "--frames", "4", "--height", "32", "--steps", "2",
            "--seeds", "0", "--classes", "7", "--block-size", "16", "--method", "sliding_tile",
            "-p", "tile=[1,4,4]", "-p", "window=[3,1,1]"]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["sparse_config"].startswith("plan method sliding_tile") and 0 < report["attention_density"] < 1
    out = tmp_path / "g.gif"
    result = runner.invoke(app, ["generate", "--frames", "2", "--height", "16", "--steps", "2", "--prompt", "orbit",
                                 "--out", str(out), "--device", "cpu", "--method", "radial", "-p", "dense_steps=1",
                                 "--block-size", "16"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert out.exists() and "method radial {'dense_steps': 1}" in " ".join(result.output.split())


@pytest.mark.parametrize("command", ["demo", "generate"])
def test_method_options_are_checked(tmp_path, command):
    base = [command, "--device", "cpu"]
    cases = [(["--method", "nope"], ["--method", "unknown method 'nope'"]),
             (["--method", "radial", "-p", "decay=2"], ["--param", "no parameter decay"]),
             (["-p", "dense_steps=2"], ["--param", "give --method NAME"]),
             (["--method", "radial", "--plan", str(tmp_path / "p.json")], ["--method", "not both"])]
    for extra, words in cases:
        result = runner.invoke(app, base + extra, terminal_width=200)
        assert result.exit_code == 2, (extra, result.output)
        text = " ".join(result.output.split())
        for w in words:
            assert w in text, (w, text)


def test_generate_takes_ultravico(tmp_path):
    out = tmp_path / "u.gif"
    result = runner.invoke(app, ["generate", "--frames", "4", "--height", "16", "--steps", "2", "--prompt", "orbit",
                                 "--out", str(out), "--device", "cpu", "--ultravico", "2:0.5", "--block-size", "16"],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert out.exists() and "UltraViCo (train_frames 2, alpha 0.5)" in " ".join(result.output.split())
    for bad in ("x", "0", "4:2"):
        result = runner.invoke(app, ["generate", "--device", "cpu", "--ultravico", bad], terminal_width=200)
        assert result.exit_code == 2 and "TRAIN_FRAMES[:ALPHA]" in " ".join(result.output.split()), result.output
