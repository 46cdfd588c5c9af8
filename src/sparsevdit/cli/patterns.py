"""``sparsevdit patterns``: list the patterns, draw one (``show``), measure them on synthetic heads (``study``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .common import (BlockSize, LayoutFrames, LayoutHeight, LayoutText, LayoutTextPosition, LayoutWidth, at_least, check_device, check_out_folder, console, parse_params, print_registry)


def _check_png(value: Optional[Path]) -> Optional[Path]:
    """``--png`` is a file: refuse a folder (or a name without .png) before the pattern is built."""
    if value is None:
        return value
    if value.is_dir():
        raise typer.BadParameter(f"{str(value)!r} is a folder: give a file name ending in .png.")
    if value.suffix.lower() != ".png":
        raise typer.BadParameter(f"{str(value)!r} does not end in .png.")
    return value


def register(app: typer.Typer) -> None:
    patterns_app = typer.Typer(help="List the attention patterns, or draw one (`sparsevdit patterns show NAME`).")
    app.add_typer(patterns_app, name="patterns")

    @patterns_app.callback(invoke_without_command=True)
    def patterns_list(ctx: typer.Context) -> None:
        """List every registered pattern with its parameters."""
        from .. import patterns as P

        if ctx.invoked_subcommand is not None:
            return
        rows = [(name, P.summary(name), [f"{p.name} ({p.default!r}): {p.help}" for p in P.parameters(name)])
                for name in P.available()]
        print_registry("attention patterns (sparsevdit.patterns.available())", "pattern", "what it keeps", rows)

    @patterns_app.command("show")
    def patterns_show(
        name: Annotated[str, typer.Argument(help="pattern name (see `sparsevdit patterns`)")],
        frames: LayoutFrames,
        height: LayoutHeight,
        width: LayoutWidth,
        text: LayoutText = 0,
        text_position: LayoutTextPosition = None,
        block_size: BlockSize = 128,
        param: List[str] = typer.Option([], "--param", "-p", help="pattern parameter key=value (JSON value), repeatable, e.g. -p width=4096"),
        png: Optional[Path] = typer.Option(None, "--png", callback=_check_png, help="write a picture of the block mask to this .png file"),
    ) -> None:
        """Build one pattern over a layout, print its summary and optionally draw its block mask."""
        from .. import patterns as P
        from ..layout import TokenLayout

        position = text_position or ("prefix" if text else "none")
        params = parse_params(param)
        layout = TokenLayout(frames, height, width, text_tokens=text, text_position=position)
        pattern = P.build(name, layout, block_size=block_size, **params)  # a bad name or parameter: one error line
        console.print(pattern.describe())
        if png is not None:
            from ..report.pictures import save_block_mask_png

            save_block_mask_png(pattern, png)
            console.print(f"wrote {png}")

    @patterns_app.command("study")
    def patterns_study(
        out: Path = typer.Option(Path("out/pattern-study"), "--out", "-o", callback=check_out_folder, help="folder for the pictures and the report"),
        device: str = typer.Option("auto", callback=check_device, help="cpu, cuda or auto"),
        seed: int = typer.Option(0, callback=at_least(0), help="random seed"),
    ) -> None:
        """Every pattern's attention error on synthetic heads with known structure; writes PNGs and a report."""
        from ..report.pattern_study import run_pattern_study

        run_pattern_study(out, device=device, seed=seed, console=console)
