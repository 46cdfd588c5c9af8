"""Command-line commands of cli_search (registered on sparsevdit.cli.app): profile, search, cost, fidelity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .cli import _fail, app, console  # noqa: F401

_SAMPLING_HELP = "calibration sampling (default: the demo's size on this device, so `demo --plan` fits)"

# Options shared by the commands that sample the bundled model (profile, search, ...).
WeightsOpt = Annotated[Optional[Path], typer.Option(help="model folder; default: the bundled model")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or auto")]
SeedsOpt = Annotated[Optional[str], typer.Option(help="calibration seeds, comma list (default 100,101)")]
ClassesOpt = Annotated[Optional[str], typer.Option(help="one scene class per seed (default: seed % number of classes)")]
FramesOpt = Annotated[Optional[int], typer.Option(help=_SAMPLING_HELP)]
HeightOpt = Annotated[Optional[int], typer.Option(help="pixels, a multiple of 4")]
WidthOpt = Annotated[Optional[int], typer.Option(help="pixels (default: as height)")]
StepsOpt = Annotated[Optional[int], typer.Option(help="denoising steps")]
GuidanceOpt = Annotated[Optional[float], typer.Option(help="classifier-free guidance scale")]
BlockSizeOpt = Annotated[Optional[int], typer.Option("--block-size", help="attention block size")]


def _calib(device: str, seeds, classes, frames, height, width, steps, guidance, block_size, backend, num_classes=9):
    from .demo import default_settings
    from .search import CalibrationConfig

    d = default_settings(device)
    seed_list = tuple(int(x) for x in seeds.split(",")) if seeds else (100, 101)
    class_list = tuple(int(x) for x in classes.split(",")) if classes else tuple(s % num_classes for s in seed_list)
    h = height or d.height
    return CalibrationConfig(
        seeds=seed_list, classes=class_list, frames=frames or d.frames, height=h, width=width or h,
        steps=steps or d.steps, guidance=d.guidance if guidance is None else guidance,
        block_size=block_size or d.block_size, backend=backend,
    )


def _model(weights, device):
    import torch

    from .models.weights import load_weights

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    return load_weights(weights, device=dev, dtype=dtype), dev


def print_plan_summary(plan, steps: int, cost, out=None) -> None:
    """Density, predicted time and pattern families per layer (per step range when a layer has at most
    three); expected density and speedup."""
    from collections import Counter

    from .search.cost import pattern_family

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


@app.command("profile")
def profile_cmd(
    out: Path = typer.Option(Path("profile.pt"), "--out", "-o", help="profile file to write (torch.save)"),
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
    rows_per_block: int = typer.Option(8, help="query rows measured per query block (0: every row)"),
) -> None:
    """Run the bundled model's sampler with dense attention and record, per (step, layer, head), block-pooled
    attention mass and every candidate pattern's output error against dense (memory-bounded)."""
    from .search import run_profile

    try:
        model, dev = _model(weights, device)
        calib = _calib(dev, seeds, classes, frames, height, width, steps, guidance, block_size, "auto",
                       model.cfg.num_classes)
        prof = run_profile(model, calib, rows_per_block=rows_per_block or None, console=console)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
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


@app.command("search")
def search_cmd(
    algorithm: str = typer.Option("budget", "--algorithm", "-a", help="sparse-vdit | budget"),
    out: Path = typer.Option(Path("plan.json"), "--out", "-o", help="plan file to write"),
    profile: Optional[Path] = typer.Option(None, help="budget: a profile from `sparsevdit profile` (default: profile first)"),
    target_psnr: Optional[float] = typer.Option(None, help="budget: PSNR (dB) of the final video vs dense on the calibration seeds"),
    max_rel_error: Optional[float] = typer.Option(None, help="budget: relative error allowed per layer (attention output, all heads)"),
    max_time: Optional[float] = typer.Option(None, help="budget: predicted attention time relative to dense (default 0.5 when no other budget)"),
    step_ranges: int = typer.Option(0, help="budget: choose separately in this many step ranges (0: every step)"),
    dense_warmup_steps: int = typer.Option(0, help="budget: the first N steps run dense"),
    dense_layers: Optional[str] = typer.Option(None, help="budget: comma list of layers kept dense"),
    layer_sensitivity: bool = typer.Option(False, help="budget: weigh layers by a measured sensitivity (one sampling run per layer)"),
    lam: float = typer.Option(0.5, "--lambda", help="sparse-vdit: weight of the cost term"),
    epsilon: float = typer.Option(1.0, help="sparse-vdit: keep dense when every sparse loss exceeds this"),
    mode_density: float = typer.Option(0.2, help="sparse-vdit: density of the diagonal / multi-diagonal / stripe modes"),
    cost: str = typer.Option("flops", help="cost model: flops | flops:OVERHEAD | measured | measured:KERNELS.json | COST.json"),
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
    rows_per_block: Optional[int] = typer.Option(None, help="query rows measured per block (budget default 8, sparse-vdit default all; 0: all)"),
    backend: str = typer.Option("auto", help="attention backend for the sparse sampling runs"),
) -> None:
    """Search a SparsityPlan for the bundled model: `sparse-vdit` (the paper's rule) or `budget` (ours)."""
    from .search import CostModel, Profile, available_algorithms, run_search

    if algorithm not in available_algorithms():
        _fail(f"unknown search algorithm {algorithm!r}; available: {', '.join(available_algorithms())}")
    try:
        model, dev = _model(weights, device)
        calib = _calib(dev, seeds, classes, frames, height, width, steps, guidance, block_size, backend,
                       model.cfg.num_classes)
        cost_model = CostModel.from_spec(cost, num_tokens=calib.layout(model).num_tokens)
        rows = None if rows_per_block == 0 else rows_per_block
        if algorithm == "budget":
            prof = Profile.load(profile) if profile is not None else None
            if prof is not None:
                calib = prof.calib
                console.print(f"profile {profile}: calibration {calib.to_dict()}")
            if target_psnr is None and max_rel_error is None and max_time is None:
                max_time = 0.5
            options = dict(target_psnr=target_psnr, max_rel_error=max_rel_error, max_time=max_time,
                           step_ranges=step_ranges or None, dense_warmup_steps=dense_warmup_steps,
                           layer_sensitivity=layer_sensitivity, profile=prof,
                           dense_layers=[int(x) for x in dense_layers.split(",")] if dense_layers else [],
                           rows_per_block=8 if rows_per_block is None else rows)
        else:
            options = dict(lam=lam, epsilon=epsilon, mode_density=mode_density, rows_per_block=rows)
        plan = run_search(algorithm, model, calib, cost=cost_model, console=console, **options)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    plan.save(out)
    print_plan_summary(plan, calib.steps, cost_model)
    console.print(f"wrote {out}; try it: sparsevdit demo --plan {out} --frames {calib.frames} --height {calib.height} "
                  f"--width {calib.width} --steps {calib.steps}")


@app.command("cost")
def cost_cmd(
    source: str = typer.Option("flops", help="flops | flops:OVERHEAD | measured | measured:KERNELS.json | COST.json"),
    calibrate: bool = typer.Option(False, "--calibrate", help="time the kernels on this GPU at the model's shape (GPU)"),
    frames: Optional[int] = typer.Option(None, help="clip frames (for --calibrate / nearest measured shape)"),
    height: Optional[int] = typer.Option(None, help="pixels"),
    width: WidthOpt = None,
    block_size: BlockSizeOpt = None,
    backend: str = typer.Option("triton", help="--calibrate: the sparse backend to time"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the cost table (JSON) here, for `search --cost FILE`"),
    weights: WeightsOpt = None,
) -> None:
    """Print (and optionally save) the cost model: relative kernel time per pattern family and density."""
    import torch

    from .search import CostModel

    model, dev = _model(weights, "auto")
    calib = _calib(dev, None, None, frames, height, width, None, None, block_size, "auto")
    layout = calib.layout(model)
    try:
        if calibrate:
            if not torch.cuda.is_available():
                _fail("--calibrate times kernels on a CUDA GPU; on this machine use --source flops or measured")
            cm = CostModel.calibrate(layout, model.cfg.heads, model.cfg.head_dim, block_size=calib.block_size,
                                     backend=backend, log=console.print)
        else:
            cm = CostModel.from_spec(source, num_tokens=layout.num_tokens)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
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


@app.command("fidelity")
def fidelity_cmd(
    out: Path = typer.Option(Path("bench/results/fidelity-cpu.json"), "--out", "-o", help="raw results JSON"),
    plot: Path = typer.Option(Path("docs/results-fidelity.png"), help="PSNR vs density / predicted time plot"),
    frames: int = typer.Option(16, help="clip frames"),
    height: int = typer.Option(32, help="pixels"),
    width: WidthOpt = None,
    steps: int = typer.Option(12, help="denoising steps"),
    block_size: int = typer.Option(32, "--block-size", help="attention block size"),
    calib_seeds: str = typer.Option("100,101,102,103,104,105",
                                    help="calibration seeds (searches); seed s draws scene class s % 9, so six seeds "
                                         "cover six classes (two seeds made target_psnr and max_time=0.5 generalise "
                                         "poorly: docs/results.md)"),
    eval_seeds: str = typer.Option("0,1,2,3", help="held-out seeds (measurement)"),
    quick: bool = typer.Option(False, help="fewer settings per method (a smoke run)"),
    weights: WeightsOpt = None,
) -> None:
    """PSNR / SSIM vs attention density of sparse-vdit, budget and uniform / SVG baselines on held-out seeds."""
    from .search.fidelity import run_fidelity

    model, dev = _model(weights, "auto")
    res = run_fidelity(model, out=out, plot=plot, frames=frames, height=height, width=width or height, steps=steps,
                       block_size=block_size, calib_seeds=[int(x) for x in calib_seeds.split(",")],
                       eval_seeds=[int(x) for x in eval_seeds.split(",")], quick=quick, console=console)
    console.print(f"wrote {out} and {plot} ({len(res['rows'])} rows, {res['seconds'] / 60:.1f} min)")
