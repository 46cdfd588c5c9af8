"""The ``sparsevdit`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import patterns as P
from .layout import TEXT_POSITIONS, TokenLayout

app = typer.Typer(
    help="Block-sparse attention for video diffusion transformers: patterns, kernels, plans.",
    no_args_is_help=True,
    add_completion=False,
)
patterns_app = typer.Typer(help="List the attention patterns, or draw one (`sparsevdit patterns show NAME`).")
app.add_typer(patterns_app, name="patterns")
console = Console()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def parse_params(items: List[str]) -> dict:
    """``key=value`` strings to a dict; values are read as JSON (numbers, true/false, lists), else text."""
    params = {}
    for item in items:
        if "=" not in item:
            _fail(f"--param expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            params[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip()] = raw
    return params


@patterns_app.callback(invoke_without_command=True)
def patterns_list(ctx: typer.Context) -> None:
    """List every registered pattern with its parameters."""
    if ctx.invoked_subcommand is not None:
        return
    table = Table(title="attention patterns (sparsevdit.patterns.available())", show_lines=True)
    table.add_column("pattern", style="bold")
    table.add_column("what it keeps")
    table.add_column("parameters (default): meaning")
    for name in P.available():
        params = "\n".join(f"{p.name} ({p.default!r}): {p.help}" for p in P.parameters(name)) or "-"
        table.add_row(name, P.summary(name), params)
    console.print(table)


@patterns_app.command("show")
def patterns_show(
    name: str = typer.Argument(..., help="pattern name (see `sparsevdit patterns`)"),
    frames: int = typer.Option(..., "--frames", "-f", help="latent frames T"),
    height: int = typer.Option(..., "--height", help="tokens per column H (after patchify)"),
    width: int = typer.Option(..., "--width", help="tokens per row W (after patchify)"),
    text: int = typer.Option(0, "--text", help="number of text tokens in the self-attention sequence"),
    text_position: str = typer.Option(None, "--text-position", help=f"where the text sits: {' | '.join(TEXT_POSITIONS)} (default prefix if --text > 0)"),
    block_size: int = typer.Option(128, "--block-size", "-b", help="tokens per block"),
    param: List[str] = typer.Option([], "--param", "-p", help="pattern parameter key=value (JSON value), repeatable, e.g. -p width=4096"),
    png: Optional[Path] = typer.Option(None, "--png", help="write a picture of the block mask here"),
) -> None:
    """Build one pattern over a layout, print its summary and optionally draw its block mask."""
    position = text_position or ("prefix" if text else "none")
    try:
        layout = TokenLayout(frames, height, width, text_tokens=text, text_position=position)
        pattern = P.build(name, layout, block_size=block_size, **parse_params(param))
    except ValueError as exc:
        _fail(str(exc))
    console.print(pattern.describe())
    if png is not None:
        from .report.pictures import save_block_mask_png

        save_block_mask_png(pattern, png)
        console.print(f"wrote {png}")


@app.command()
def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="folder for the videos and the report"),
    device: str = typer.Option("auto", help="cpu, cuda or auto"),
    weights: Optional[Path] = typer.Option(None, help="model folder (config.json + safetensors); default: the bundled model"),
    frames: Optional[int] = typer.Option(None, help="frames to generate (default: 16)"),
    height: Optional[int] = typer.Option(None, help="pixels, a multiple of 4 (default: 48 on CPU, 128 on GPU)"),
    width: Optional[int] = typer.Option(None, help="pixels, a multiple of 4 (default: as height)"),
    steps: Optional[int] = typer.Option(None, help="denoising steps (default: 16 on CPU, 30 on GPU)"),
    seeds: Optional[str] = typer.Option(None, help="comma list of seeds, e.g. 0,1"),
    classes: Optional[str] = typer.Option(None, help="comma list of scene class indices, one per seed (see `sparsevdit classes`)"),
    block_size: Optional[int] = typer.Option(None, help="attention block size (default: 64 on CPU, 128 on GPU)"),
    backend: str = typer.Option("auto", help="attention backend for the sparse run"),
    plan: Optional[Path] = typer.Option(None, "--plan", help="sparse run uses this plan file (from `sparsevdit search`); its layout must match the clip size"),
    fixed_mix: bool = typer.Option(False, "--fixed-mix", help="use the fixed per-head mix even where a bundled searched plan fits the clip size"),
) -> None:
    """Generate the same seeds with dense and sparse attention on the bundled model; write videos and a report.

    The sparse run uses, in order: --plan; the searched plan shipped for the default CPU size
    (sparsevdit/models/plans/); else a fixed per-head mix of diagonal / multi-diagonal / stripe heads.
    """
    from dataclasses import replace

    import torch

    from .demo import default_settings, run_demo

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    s = default_settings(dev)
    changes = {k: v for k, v in dict(frames=frames, height=height, width=width or height, steps=steps,
                                     block_size=block_size).items() if v is not None}
    if seeds:
        changes["seeds"] = tuple(int(x) for x in seeds.split(","))
    if classes:
        changes["classes"] = tuple(int(x) for x in classes.split(","))
    s = replace(s, backend=backend, **changes)
    if len(s.classes) != len(s.seeds):
        s = replace(s, classes=tuple(seed % 8 for seed in s.seeds) if not classes else s.classes)
    if len(s.classes) != len(s.seeds):
        _fail(f"give one class per seed: {len(s.seeds)} seeds, {len(s.classes)} classes")
    try:
        loaded = None
        if plan is not None:
            from .plan import SparsityPlan

            loaded = SparsityPlan.load(plan)
            loaded.source = str(plan)
        run_demo(out, device=dev, settings=s, weights=weights, plan=loaded, use_bundled_plan=not fixed_mix, console=console)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


@patterns_app.command("study")
def patterns_study(
    out: Path = typer.Option(Path("out/pattern-study"), "--out", "-o", help="folder for the pictures and the report"),
    device: str = typer.Option("auto", help="cpu, cuda or auto"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Every pattern's attention error on synthetic heads with known structure; writes PNGs and a report."""
    from .synthetic_study import run_demo as run_study

    run_study(out, device=device, seed=seed, console=console)


@app.command()
def train(
    out: Path = typer.Option(Path("out/train"), "--out", "-o", help="folder for log.jsonl, loss.png, checkpoint.pt, weights/"),
    steps: int = typer.Option(3000, help="optimizer steps"),
    batch: int = typer.Option(32, help="clips per step"),
    lr: float = typer.Option(3e-4, help="peak learning rate (warm-up, then cosine to 10%)"),
    max_minutes: Optional[float] = typer.Option(None, help="end the run after this many training minutes (summed over resumes); the cosine schedule ends there"),
    stop_after_minutes: Optional[float] = typer.Option(None, help="stop this invocation (saving a checkpoint) after N minutes; continue later with --resume"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the training step (default: on for CUDA)"),
    eval_every: int = typer.Option(250, help="validation on held-out seeds every N steps"),
    frames: int = typer.Option(16, help="training clip frames"),
    size: int = typer.Option(64, help="training clip height = width, pixels"),
    dim: int = typer.Option(384, help="model width"),
    depth: int = typer.Option(8, help="transformer blocks"),
    heads: int = typer.Option(6, help="attention heads"),
    device: str = typer.Option("auto", help="cpu, cuda or auto"),
    seed: int = typer.Option(0, help="random seed (data stream and initialisation)"),
    resume: bool = typer.Option(False, help="continue from out/checkpoint.pt"),
) -> None:
    """Train the video DiT on procedural clips (rectified flow; bf16 on GPU; tiny sizes run on CPU)."""
    from .models.data import CLASSES
    from .models.train import TrainConfig, train as run_train
    from .models.vdit import VDiTConfig

    model = VDiTConfig(dim=dim, depth=depth, heads=heads, num_classes=len(CLASSES), frames=frames, height=size, width=size)
    if compile is None:
        import torch

        compile = device != "cpu" and torch.cuda.is_available()
    cfg = TrainConfig(steps=steps, batch=batch, lr=lr, max_minutes=max_minutes, stop_after_minutes=stop_after_minutes,
                      compile=compile, eval_every=eval_every, seed=seed, checkpoint_every=max(eval_every, 100), model=model)
    meta = run_train(cfg, out, device=device, resume=resume, log=console.print)
    console.print(f"validation loss {meta['val_loss_untrained']:.4f} (untrained) -> {meta['val_loss_final']:.4f}; weights in {out / 'weights'}")


@app.command("classes")
def list_classes() -> None:
    """The scene classes of the bundled model's training data, with their captions."""
    from .models.data import CLASSES, caption_for

    for i, name in enumerate(CLASSES):
        console.print(f"{i}: {name} - {caption_for(i)}")


bench_app = typer.Typer(help="GPU benchmarks: attention kernels (`bench kernels`), whole-model speed (`bench e2e`).")
app.add_typer(bench_app, name="bench")
# The bench commands pass every argument, --help included, to the benchmark's own parser (the same one
# `python bench/kernels.py` / `python bench/e2e.py` use), so both spellings take the same options.
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@bench_app.command("kernels", context_settings=_PASS_THROUGH, add_help_option=False)
def bench_kernels(ctx: typer.Context) -> None:
    """cuDNN dense SDPA vs sparse backends at several densities; --calibrate: the cost model's table (GPU; --help)."""
    from .bench.kernels import main

    raise typer.Exit(main(ctx.args, prog="sparsevdit bench kernels"))


@bench_app.command("e2e", context_settings=_PASS_THROUGH, add_help_option=False)
def bench_e2e(ctx: typer.Context) -> None:
    """One Wan2.1 transformer forward (1.3B at 480p, 14B at 720p), dense cuDNN vs sparse plans (GPU; --help)."""
    from .bench.e2e import main

    raise typer.Exit(main(ctx.args, prog="sparsevdit bench e2e"))


def main() -> None:  # pragma: no cover
    app()


# Commands defined in their own modules register themselves on `app` when imported.
from . import cli_generate as _cli_generate  # noqa: E402,F401
from . import cli_search as _cli_search  # noqa: E402,F401

from . import cli_report as _cli_report  # noqa: E402,F401
