"""``sparsevdit attention-study``: what the bundled model's heads attend to."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import at_least, check_classes, check_out_folder, check_pixels, console, model_config


def register(app: typer.Typer) -> None:
    @app.command("attention-study")
    def attention_study(
        out: Path = typer.Option(Path("out/attention-study"), "--out", "-o", callback=check_out_folder,
                                 help="folder for the pictures and study.json (the study in the repository: docs/attention-study)"),
        weights: Optional[Path] = typer.Option(None, help="model folder; default: the bundled model"),
        frames: int = typer.Option(16, callback=at_least(1), help="frames"),
        size: int = typer.Option(64, callback=at_least(1), help="height = width, pixels (a multiple of the patch size 4)"),
        steps: int = typer.Option(16, callback=at_least(1), help="denoising steps of the sampling run that is observed"),
        seed: int = typer.Option(0, callback=at_least(0), help="seed of the sampled clip"),
        cls: int = typer.Option(7, "--class", help="scene class of the sampled clip (`sparsevdit classes`)"),
        block_size: int = typer.Option(64, callback=at_least(1), help="block size of the pooled maps and the patterns"),
    ) -> None:
        """Block-pooled attention maps of every layer and head at early, middle and late steps, and a per-head
        count of which pattern (diagonal, multi-diagonal, stripes, other) covers most attention mass."""
        from ..report.attention_study import run_study

        cfg = model_config(weights)
        check_pixels(cfg, frames=frames, height=size, width=size)
        check_classes((cls,), cfg, "--class")
        run_study(out, weights=weights, frames=frames, size=size, steps=steps, seed=seed, cls=cls,
                  block_size=block_size, console=console)
