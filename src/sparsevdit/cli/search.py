"""``sparsevdit profile``, ``search``, ``cost`` and ``fidelity``: searching plans for the bundled model or a
diffusers pipeline (``--pipeline``, through the search runners)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .common import (at_least, bad, check_backend, check_device, check_out_file, check_pixels, console, finite, int_list,
                     model_config, resolve_device)

_SAMPLING_HELP = "calibration sampling (default: the demo's size on this device, so `demo --plan` fits)"
COST_SPECS = "flops | flops:OVERHEAD | measured | measured:KERNELS.json | COST.json"


def check_cost_spec(value: str) -> str:
    """``--cost`` / ``--source`` callback: a spec CostModel.from_spec reads, its file of the right kind."""
    if value in ("flops", "measured"):
        return value
    if value.startswith("flops:"):
        try:
            overhead = float(value.split(":", 1)[1])
        except ValueError:
            overhead = math.nan
        if not (math.isfinite(overhead) and overhead >= 0):
            raise typer.BadParameter(f"{value!r}: the per-block overhead of flops:OVERHEAD must be a finite number >= 0.")
        return value
    measured = value.startswith("measured:")
    path = Path(value.split(":", 1)[1] if measured else value)
    if not path.is_file():
        raise typer.BadParameter(f"{value!r} is not a cost model: expected {COST_SPECS} (no file {str(path)!r}).")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"{str(path)!r} is not a JSON file ({exc}).") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    kernel_rows = isinstance(rows, list) and bool(rows) and all(isinstance(r, dict) and "shape" in r and "backend" in r for r in rows)
    cost_table = isinstance(data, dict) and data.get("format") == "sparsevdit-cost"
    if not (kernel_rows or (cost_table and not measured)):
        raise typer.BadParameter(
            f"{str(path)!r} is neither a cost table (`sparsevdit cost --out`) nor a kernel benchmark result "
            "(`sparsevdit bench kernels`)."
        )
    return value


def check_algorithm(value: str) -> str:
    from ..search import available_algorithms

    if value not in available_algorithms():
        raise typer.BadParameter(f"unknown search algorithm {value!r}; choose from {', '.join(available_algorithms())}.")
    return value


# Options shared by the commands that sample the bundled model (profile, search, ...).
WeightsOpt = Annotated[Optional[Path], typer.Option(help="model folder; default: the bundled model")]
DeviceOpt = Annotated[str, typer.Option(callback=check_device, help="cpu, cuda or auto")]
SeedsOpt = Annotated[Optional[str], typer.Option(help="calibration seeds (integers >= 0), comma list (default 100,101)")]
ClassesOpt = Annotated[Optional[str], typer.Option(help="one scene class per seed (default: seed % number of classes)")]
FramesOpt = Annotated[Optional[int], typer.Option(callback=at_least(1), help=_SAMPLING_HELP)]
HeightOpt = Annotated[Optional[int], typer.Option(callback=at_least(1), help="pixels, a multiple of the patch size 4")]
WidthOpt = Annotated[Optional[int], typer.Option(callback=at_least(1), help="pixels (default: as height)")]
StepsOpt = Annotated[Optional[int], typer.Option(callback=at_least(1), help="denoising steps")]
GuidanceOpt = Annotated[Optional[float], typer.Option(callback=finite(0), help="classifier-free guidance scale (>= 0)")]
BlockSizeOpt = Annotated[Optional[int], typer.Option("--block-size", callback=at_least(1), help="attention block size")]
BackendOpt = Annotated[str, typer.Option(callback=check_backend, help="attention backend for the sparse sampling runs")]
PipelineOpt = Annotated[str, typer.Option(
    "--pipeline", help="the model to search on: bundled (our VideoDiT), tiny:wan | tiny:cogvideox | tiny:hunyuan (real "
                       "diffusers pipelines at toy size, random weights, offline), or a diffusers pipeline folder / Hub id")]
PromptsOpt = Annotated[Optional[Path], typer.Option("--prompts", help="pipelines: calibration prompts, a text file with one per line")]
PromptOpt = Annotated[Optional[str], typer.Option("--prompt", help="pipelines: one more calibration prompt")]
NegativeOpt = Annotated[Optional[str], typer.Option("--negative-prompt", help="pipelines: the negative prompt of every run")]
CompareOpt = Annotated[str, typer.Option("--compare", help="pipelines: what dense and sparse runs are compared on: video "
                                                           "(decoded, default) or latents (when the VAE does not fit)")]


class _Prepared:
    """A --pipeline's calibration run checked, the model not loaded yet (``load()``): the bundled model's
    calibration and depth are known before any model work, a pipeline's only once it is loaded."""

    def __init__(self, load, calib=None, depth=None):
        self._load, self.calib, self.depth = load, calib, depth

    def load(self, calib=None):
        return self._load(calib)


def _prepare(pipeline: str, weights, device: str, seeds, classes, frames, height, width, steps, guidance, block_size,
             backend, prompts_file=None, prompt=None, negative_prompt=None, compare: str = "video") -> _Prepared:
    """The search runner of --pipeline with its calibration run (bundled: the model folder of --weights)."""
    from ..search.runners import as_runner
    from .pipelines import is_bundled, pipeline_runner, read_prompts

    if compare not in ("video", "latents"):
        bad("--compare", compare, "video or latents")
    if is_bundled(pipeline):
        if compare != "video":
            bad("--compare", compare, "video for the bundled model (it has no latents apart from its video)")
        for option, value in (("--prompts", prompts_file), ("--prompt", prompt), ("--negative-prompt", negative_prompt)):
            if value is not None:
                bad(option, str(value), "an option of diffusers pipelines (--pipeline): the bundled model takes --classes")
        cfg = model_config(weights)
        calib = _calib(cfg, resolve_device(device), seeds, classes, frames, height, width, steps, guidance, block_size, backend)
        return _Prepared(lambda c=None: as_runner(_model(weights, device)[0], c or calib), calib, cfg.depth)
    if weights is not None:
        bad("--weights", str(weights), "an option of the bundled model: a pipeline's weights are its --pipeline folder")
    if classes is not None:
        bad("--classes", classes, "an option of the bundled model: pipelines take --prompts")
    seed_list = int_list(seeds, "--seeds", low=0)
    texts = read_prompts(prompts_file, prompt)

    def load(calib=None):
        runner = pipeline_runner(pipeline, device=resolve_device(device), prompts=texts, negative_prompt=negative_prompt,
                                 seeds=seed_list, frames=frames, height=height, width=width, steps=steps,
                                 guidance=guidance, block_size=block_size, backend=backend, compare=compare)
        return runner if calib is None else as_runner(runner.pipe, calib)

    return _Prepared(load)


def _calib(cfg, device: str, seeds, classes, frames, height, width, steps, guidance, block_size, backend):
    """The calibration run, every option checked against the model ``cfg`` (a VDiTConfig)."""
    from ..demo import default_settings
    from ..search import CalibrationConfig

    check_pixels(cfg, frames=frames, height=height, width=width)
    nc = cfg.num_classes
    d = default_settings(device)
    seed_list = int_list(seeds, "--seeds", low=0) or (100, 101)
    class_list = int_list(classes, "--classes", low=0, high=nc - 1, what=f"the model's {nc} classes")
    class_list = class_list or tuple(s % nc for s in seed_list)
    if len(class_list) != len(seed_list):
        bad("--classes", classes, f"one class per seed ({len(seed_list)} seeds)")
    h = height or d.height
    return CalibrationConfig(
        seeds=seed_list, classes=class_list, frames=frames or d.frames, height=h, width=width or h,
        steps=steps or d.steps, guidance=d.guidance if guidance is None else guidance,
        block_size=block_size or d.block_size, backend=backend,
    )


def _model(weights, device):
    import torch

    from ..models.weights import load_weights

    dev = resolve_device(device)
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    return load_weights(weights, device=dev, dtype=dtype), dev


def print_plan_summary(plan, steps: int, cost, out=None) -> None:
    """Density, predicted time and pattern families per layer (per step range when a layer has at most
    three); expected density and speedup."""
    from collections import Counter

    from ..search.cost import pattern_family

    out = out or console
    table = Table(title=f"plan: {plan.metadata.get('algorithm', '?')} over {plan.layout} ({steps} steps)")
    for col in ("layer", "steps", "density", "relative time", "heads (head-steps per family)"):
        table.add_column(col, justify="right" if col in ("layer", "density", "relative time") else "left")
    for layer in range(plan.model.num_layers):
        entries = sorted((e for e in plan.entries if e.layer == layer), key=lambda e: e.step_start)
        if not entries:
            table.add_row(str(layer), "all", "100.0%", "1.000", "dense")
            continue
        if len(entries) <= 3:
            groups = [(f"{e.step_start}-{(e.step_end if e.step_end is not None else steps) - 1}",
                       range(e.step_start, e.step_end if e.step_end is not None else steps)) for e in entries]
        else:
            groups = [(f"{len(entries)} ranges", range(steps))]
        for label, rng in groups:
            fams, dens, tm = Counter(), 0.0, 0.0
            for step in rng:
                pats = plan.patterns_for(layer, step)
                dens += 1.0 if pats is None else sum(p.density for p in pats) / len(pats)
                tm += cost.layer_time(pats)
                fams.update(["dense (layer)"] * plan.model.num_heads if pats is None else [pattern_family(p) for p in pats])
            n = max(len(rng), 1)
            table.add_row(str(layer), label, f"{dens / n:.1%}", f"{tm / n:.3f}",
                          ", ".join(f"{k} x{v}" for k, v in sorted(fams.items())))
    out.print(table)
    pred = cost.plan_time(plan, steps)
    speed = f"{pred['speedup']:.2f}x" if pred["speedup"] else "n/a (every head skipped)"
    err = plan.metadata.get("expected_rel_error")  # budget: mean layer-level relative error (profiled)
    psnr = plan.metadata.get("calibration_psnr")
    out.print(
        f"attention density {pred['density']:.1%}; predicted attention time {pred['relative_time']:.3f} of dense "
        f"({speed} attention speedup; cost model: {cost.describe()})"
        + (f"; mean profiled layer relative error {err:.3f}" if err is not None else "")
        + (f"; calibration PSNR vs dense {psnr:.2f} dB" if psnr is not None else "")
    )


def register(app: typer.Typer) -> None:
    app.command("profile")(profile_cmd)
    app.command("search")(search_cmd)
    app.command("cost")(cost_cmd)
    app.command("fidelity")(fidelity_cmd)


def profile_cmd(
    out: Path = typer.Option(Path("out/profile.pt"), "--out", "-o", callback=check_out_file, help="profile file to write (torch.save)"),
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    seeds: SeedsOpt = None,
    classes: ClassesOpt = None,
    frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    block_size: BlockSizeOpt = None,
    rows_per_block: int = typer.Option(8, callback=at_least(0), help="query rows measured per query block (0: every row)"),
    pipeline: PipelineOpt = "bundled",
    prompts: PromptsOpt = None,
    prompt: PromptOpt = None,
    negative_prompt: NegativeOpt = None,
    compare: CompareOpt = "video",
) -> None:
    """Sample the model with dense attention and record, per (step, layer, head), block-pooled attention mass
    and every candidate pattern's output error against dense (memory-bounded): the bundled model, or a
    diffusers pipeline (--pipeline) on its calibration prompts."""
    from ..search import run_profile

    runner = _prepare(pipeline, weights, device, seeds, classes, frames, height, width, steps, guidance, block_size, "auto",
                      prompts, prompt, negative_prompt, compare).load()
    prof = run_profile(runner, rows_per_block=rows_per_block or None, console=console)
    prof.save(out)
    best = prof.rel_err.mean(0)  # [L, H, C]
    console.print(f"{len(prof.candidates)} candidates, {prof.steps} steps x {prof.num_layers} layers x {prof.num_heads} heads "
                  f"on {prof.layout}, {prof.settings['rows_measured']} query rows; {prof.settings['seconds']:.0f} s")
    table = Table(title="mean relative error of each candidate (over steps, layers, heads)")
    table.add_column("candidate")
    table.add_column("density", justify="right")
    table.add_column("rel. error", justify="right")
    table.add_column("recall", justify="right")
    for ci, c in enumerate(prof.candidates):
        table.add_row(c.label, f"{float(prof.density[..., ci].mean()):.1%}", f"{float(best[..., ci].mean()):.3f}",
                      f"{float(prof.recall[..., ci].mean()):.3f}")
    console.print(table)
    console.print(f"wrote {out}")


def search_cmd(
    algorithm: str = typer.Option("budget", "--algorithm", "-a", callback=check_algorithm, help="sparse-vdit | budget"),
    out: Path = typer.Option(Path("out/plan.json"), "--out", "-o", callback=check_out_file, help="plan file to write"),
    profile: Optional[Path] = typer.Option(None, help="budget: a profile from `sparsevdit profile` (default: profile first)"),
    target_psnr: Optional[float] = typer.Option(None, callback=finite(0, min_open=True), help="budget: PSNR (dB, > 0) of the final video vs dense on the calibration seeds (or --psnr-seeds)"),
    psnr_seeds: Optional[str] = typer.Option(None, help="budget --target-psnr: measure the PSNR on these seeds instead (comma list; more seeds than the profile's, or others, make the target hold better on new seeds; bundled: seed s draws class s % classes)"),
    max_rel_error: Optional[float] = typer.Option(None, callback=finite(0, min_open=True), help="budget: relative error (> 0) allowed per layer (attention output, all heads)"),
    max_time: Optional[float] = typer.Option(None, callback=finite(0, 1, min_open=True), help="budget: predicted attention time relative to dense, in (0, 1] (default 0.5 when no other budget)"),
    step_ranges: int = typer.Option(0, callback=at_least(0), help="budget: choose separately in this many step ranges (0: every step)"),
    dense_warmup_steps: int = typer.Option(0, callback=at_least(0), help="budget: the first N steps run dense (fewer than --steps)"),
    dense_layers: Optional[str] = typer.Option(None, help="budget: comma list of layers kept dense (0 to the model's layers - 1)"),
    layer_sensitivity: bool = typer.Option(False, help="budget: weigh layers by a measured sensitivity (one sampling run per layer)"),
    step_sensitivity: bool = typer.Option(False, help="budget: weigh 5 groups of steps by a measured sensitivity (one sampling run per group): an error at a high-noise step is carried through every later one"),
    lam: float = typer.Option(0.5, "--lambda", callback=finite(0), help="sparse-vdit: weight of the cost term (>= 0)"),
    epsilon: float = typer.Option(1.0, callback=finite(0, min_open=True), help="sparse-vdit: keep dense when every sparse loss exceeds this (> 0)"),
    mode_density: float = typer.Option(0.2, callback=finite(0, 1, min_open=True), help="sparse-vdit: density in (0, 1] of the diagonal / multi-diagonal / stripe modes"),
    cost: str = typer.Option("flops", callback=check_cost_spec, help=f"cost model: {COST_SPECS}"),
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    seeds: SeedsOpt = None,
    classes: ClassesOpt = None,
    frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    block_size: BlockSizeOpt = None,
    rows_per_block: Optional[int] = typer.Option(None, callback=at_least(0), help="query rows measured per block (budget default 8, sparse-vdit default all; 0: all)"),
    backend: BackendOpt = "auto",
    pipeline: PipelineOpt = "bundled",
    prompts: PromptsOpt = None,
    prompt: PromptOpt = None,
    negative_prompt: NegativeOpt = None,
    compare: CompareOpt = "video",
) -> None:
    """Search a SparsityPlan: `sparse-vdit` (the paper's rule) or `budget` (ours), for the bundled model or a
    diffusers pipeline (--pipeline) on its calibration prompts."""
    from ..search import CostModel, Profile, run_search

    if algorithm != "budget":
        given = {"--target-psnr": target_psnr is not None, "--max-rel-error": max_rel_error is not None,
                 "--max-time": max_time is not None, "--step-ranges": bool(step_ranges),
                 "--dense-warmup-steps": bool(dense_warmup_steps), "--dense-layers": dense_layers is not None,
                 "--layer-sensitivity": layer_sensitivity, "--step-sensitivity": step_sensitivity,
                 "--profile": profile is not None, "--psnr-seeds": psnr_seeds is not None}
        for option, set_ in given.items():
            if set_:
                bad(option, "given", f"an option of --algorithm budget only (this search is {algorithm}): drop it or use budget")
    check_seeds = int_list(psnr_seeds, "--psnr-seeds", low=0)
    if check_seeds is not None:
        if target_psnr is None:
            bad("--psnr-seeds", psnr_seeds, "the seeds --target-psnr is measured on: give --target-psnr too, or drop it")
        if len(set(check_seeds)) != len(check_seeds):
            bad("--psnr-seeds", psnr_seeds, "distinct seeds (one is repeated)")
    prof = Profile.load(profile) if (algorithm == "budget" and profile is not None) else None
    prep = _prepare(pipeline, weights, device, seeds, classes, frames, height, width, steps, guidance, block_size, backend,
                    prompts, prompt, negative_prompt, compare)
    if prof is not None:
        measured_with = prof.settings.get("runner", "bundled")
        if prep.depth is not None and measured_with != "bundled":  # checked before the bundled model loads
            bad("--profile", str(profile), f"a profile of the bundled model; it was measured with the {measured_with} runner "
                                           "(pass its --pipeline)")
        console.print(f"profile {profile}: calibration {prof.calib.to_dict()}")

    def check(depth: int, calib) -> list:
        layers = int_list(dense_layers, "--dense-layers", low=0, high=depth - 1, what=f"the model's {depth} layers")
        if dense_warmup_steps >= calib.steps:
            bad("--dense-warmup-steps", dense_warmup_steps, f"fewer than the {calib.steps} denoising steps (all dense is no plan)")
        return list(layers or ())

    if prep.depth is not None:  # the bundled model: every check before any model work
        layers = check(prep.depth, prof.calib if prof is not None else prep.calib)
    runner = prep.load(prof.calib if prof is not None else None)
    if prof is not None and prof.settings.get("runner", "bundled") != runner.name:
        bad("--profile", str(profile), f"a profile of this --pipeline ({runner.name}); it was measured with the "
                                       f"{prof.settings.get('runner', 'bundled')} runner")
    if prep.depth is None:
        layers = check(runner.signature().num_layers, runner.calib)
    calib = runner.calib
    cost_model = CostModel.from_spec(cost, num_tokens=runner.layout().num_tokens)
    rows = None if rows_per_block == 0 else rows_per_block
    if algorithm == "budget":
        if target_psnr is None and max_rel_error is None and max_time is None:
            max_time = 0.5
        options = dict(target_psnr=target_psnr, max_rel_error=max_rel_error, max_time=max_time,
                       step_ranges=step_ranges or None, dense_warmup_steps=dense_warmup_steps,
                       layer_sensitivity=layer_sensitivity, step_sensitivity=step_sensitivity, profile=prof, dense_layers=layers,
                       rows_per_block=8 if rows_per_block is None else rows, psnr_seeds=tuple(check_seeds or ()))
    else:
        options = dict(lam=lam, epsilon=epsilon, mode_density=mode_density, rows_per_block=rows)
    plan = run_search(algorithm, runner, None, cost=cost_model, console=console, **options)
    plan.save(out)
    print_plan_summary(plan, calib.steps, cost_model)
    if runner.name == "bundled":
        console.print(f"wrote {out}; try it: sparsevdit demo --plan {out} --frames {calib.frames} --height {calib.height} "
                      f"--width {calib.width} --steps {calib.steps}")
    else:
        console.print(f"wrote {out}; try it: sparsevdit generate --pipeline {pipeline} --plan {out} --steps {calib.steps}")


def cost_cmd(
    source: str = typer.Option("flops", callback=check_cost_spec, help=COST_SPECS),
    calibrate: bool = typer.Option(False, "--calibrate", help="time the kernels on this GPU at the model's shape (GPU)"),
    frames: Optional[int] = typer.Option(None, callback=at_least(1), help="clip frames (for --calibrate / nearest measured shape)"),
    height: Optional[int] = typer.Option(None, callback=at_least(1), help="pixels, a multiple of the patch size 4"),
    width: WidthOpt = None,
    block_size: BlockSizeOpt = None,
    backend: str = typer.Option("triton", callback=check_backend, help="--calibrate: the sparse backend to time"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=check_out_file, help="write the cost table (JSON) here, for `search --cost FILE`"),
    weights: WeightsOpt = None,
) -> None:
    """Print (and optionally save) the cost model: relative kernel time per pattern family and density."""
    import torch

    from ..search import CostModel

    if calibrate and not torch.cuda.is_available():
        bad("--calibrate", True, "a CUDA GPU to time kernels on; on this machine use --source flops or measured")
    cfg = model_config(weights)
    calib = _calib(cfg, resolve_device("auto"), None, None, frames, height, width, None, None, block_size, "auto")
    model, _ = _model(weights, "auto")
    layout = calib.layout(model)
    if calibrate:
        from ..bench.kernels import calibrate_cost_model

        cm = calibrate_cost_model(layout, model.cfg.heads, model.cfg.head_dim, block_size=calib.block_size,
                                  backend=backend, log=console.print)
    else:
        cm = CostModel.from_spec(source, num_tokens=layout.num_tokens)
    rows = cm.rows()
    table = Table(title=f"relative attention time per head (dense SDPA = 1): {cm.describe()}")
    for col in rows[0]:
        table.add_column(col if col == "family" else f"d={col}", justify="left" if col == "family" else "right")
    for r in rows:
        table.add_row(*[str(v) for v in r.values()])
    console.print(table)
    if out is not None:
        cm.save(out)
        console.print(f"wrote {out}")


def fidelity_cmd(
    out: Path = typer.Option(Path("out/fidelity/fidelity-cpu.json"), "--out", "-o", callback=check_out_file,
                             help="raw results JSON (the repository's: bench/results/fidelity-cpu.json)"),
    plot: Path = typer.Option(Path("out/fidelity/results-fidelity.png"), callback=check_out_file,
                              help="PSNR vs density / predicted time plot (the repository's: docs/results-fidelity.png)"),
    frames: int = typer.Option(16, callback=at_least(1), help="clip frames"),
    height: int = typer.Option(32, callback=at_least(1), help="pixels, a multiple of the patch size 4"),
    width: WidthOpt = None,
    steps: int = typer.Option(12, callback=at_least(1), help="denoising steps"),
    block_size: int = typer.Option(32, "--block-size", callback=at_least(1), help="attention block size"),
    calib_seeds: str = typer.Option("100,101,102,103,104,105",
                                    help="calibration seeds (searches); seed s draws scene class s % 9, so six seeds "
                                         "cover six classes (two seeds made target_psnr and max_time=0.5 generalise "
                                         "poorly: docs/results.md)"),
    eval_seeds: str = typer.Option("0,1,2,3", help="held-out seeds (measurement)"),
    quick: bool = typer.Option(False, help="fewer settings per method (a smoke run)"),
    weights: WeightsOpt = None,
    device: str = typer.Option("auto", callback=check_device, help="cpu, cuda or auto"),
    measure_time: Optional[bool] = typer.Option(None, "--measure-time/--no-measure-time",
                                                help="sample every video twice and time the warm run against the warm dense one (default: on for GPU)"),
    grid: Optional[str] = typer.Option(None, help="settings to run instead of the defaults: a JSON object (inline or a .json file) with keys "
                                                  "uniform_densities, svg, sparse_vdit, budget, budget_sensitivity; e.g. "
                                                  "'{\"budget\": [{\"max_time\": 0.2}, {\"target_psnr\": 30, \"step_sensitivity\": true}], \"svg\": []}'"),
    plans: Optional[Path] = typer.Option(None, help="folder to write every evaluated plan into (NN-method-setting.json)"),
) -> None:
    """PSNR / SSIM vs attention density of sparse-vdit, budget and uniform / SVG baselines on held-out seeds."""
    from ..search.fidelity import check_grid, run_fidelity

    cfg = model_config(weights)
    check_pixels(cfg, frames=frames, height=height, width=width)
    calib = int_list(calib_seeds, "--calib-seeds", low=0)
    held_out = int_list(eval_seeds, "--eval-seeds", low=0)
    if plot.suffix.lower() != ".png":
        bad("--plot", str(plot), "a file name ending in .png")
    overlap = sorted(set(calib) & set(held_out))
    if overlap:
        bad("--eval-seeds", eval_seeds, f"seeds the calibration never saw (shared with --calib-seeds: {overlap})")
    grid_override = None
    if grid is not None:
        text = grid
        if not grid.lstrip().startswith("{"):
            if not Path(grid).is_file():
                bad("--grid", grid, "a JSON object, or the path of a .json file holding one")
            text = Path(grid).read_text()
        try:
            grid_override = check_grid(json.loads(text))
        except json.JSONDecodeError as exc:
            bad("--grid", grid, f"valid JSON ({exc})")
        except (ValueError, TypeError) as exc:
            bad("--grid", grid, str(exc))
    if plans is not None:
        if plans.exists() and not plans.is_dir():
            bad("--plans", str(plans), "a folder (this is a file)")
        plans.mkdir(parents=True, exist_ok=True)
    model, _ = _model(weights, device)
    res = run_fidelity(model, out=out, plot=plot, frames=frames, height=height, width=width or height, steps=steps,
                       block_size=block_size, calib_seeds=list(calib), eval_seeds=list(held_out), quick=quick,
                       measure_time=measure_time, grid=grid_override, plans_dir=plans, console=console)
    console.print(f"wrote {out} and {plot} ({len(res['rows'])} rows, {res['seconds'] / 60:.1f} min)")
