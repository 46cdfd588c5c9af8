"""Report commands: the attention study of the bundled model (registered on sparsevdit.cli.app)."""

from pathlib import Path
from typing import Optional

import typer

from .cli import app, console


@app.command("attention-study")
def attention_study(
    out: Path = typer.Option(Path("docs/attention-study"), "--out", "-o", help="folder for the pictures and study.json"),
    weights: Optional[Path] = typer.Option(None, help="model folder; default: the bundled model"),
    frames: int = typer.Option(16, help="frames"),
    size: int = typer.Option(64, help="height = width, pixels"),
    steps: int = typer.Option(16, help="denoising steps of the sampling run that is observed"),
    seed: int = typer.Option(0, help="seed of the sampled clip"),
    cls: int = typer.Option(7, "--class", help="scene class of the sampled clip"),
    block_size: int = typer.Option(64, help="block size of the pooled maps and the patterns"),
) -> None:
    """Block-pooled attention maps of every layer and head at early, middle and late steps, and a per-head
    count of which pattern (diagonal, multi-diagonal, stripes, other) covers most attention mass."""
    from .report.attention_study import run_study

    run_study(out, weights=weights, frames=frames, size=size, steps=steps, seed=seed, cls=cls,
              block_size=block_size, console=console)
