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
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="folder for the pictures and the report"),
    device: str = typer.Option("auto", help="cpu, cuda or auto"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Patterns and sparse-vs-dense attention error on structured random data; writes PNGs and a report."""
    from .demo import run_demo

    run_demo(out, device=device, seed=seed, console=console)


bench_app = typer.Typer(help="GPU benchmarks.")
app.add_typer(bench_app, name="bench")


@bench_app.command("kernels", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_kernels(ctx: typer.Context) -> None:
    """cuDNN dense SDPA vs sparse backends at several densities (options: see `--help` of bench/kernels.py)."""
    from .bench.kernels import main

    raise typer.Exit(main(ctx.args))


def main() -> None:  # pragma: no cover
    app()
