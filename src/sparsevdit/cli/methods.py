"""``sparsevdit methods``: list the methods with their parameters and defaults, build one (``show``)."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from .common import (BlockSize, LayoutFrames, LayoutHeight, LayoutText, LayoutTextPosition, LayoutWidth, at_least, console, parse_params, print_registry)


def register(app: typer.Typer) -> None:
    methods_app = typer.Typer(help="List the sparse attention methods, or build one (`sparsevdit methods show NAME`).")
    app.add_typer(methods_app, name="methods")

    @methods_app.callback(invoke_without_command=True)
    def methods_list(ctx: typer.Context) -> None:
        """List every registered method with its parameters and defaults."""
        from .. import methods as M

        if ctx.invoked_subcommand is not None:
            return
        rows = []
        for name in M.list_methods():
            method = M.get_method(name)
            lines = [f"{p.name} ({p.default!r}): {p.help}" for p in M.param_info(name)]
            lines += [f"preset {preset}: {values}" for preset, values in method.presets.items()]
            rows.append((name, method.summary, lines))
        print_registry("attention methods (sparsevdit.methods.list_methods())", "method", "what it does", rows)

    @methods_app.command("show")
    def methods_show(
        name: Annotated[str, typer.Argument(help="method name (see `sparsevdit methods`)")],
        frames: LayoutFrames,
        height: LayoutHeight,
        width: LayoutWidth,
        text: LayoutText = 0,
        text_position: LayoutTextPosition = None,
        block_size: BlockSize = 128,
        param: List[str] = typer.Option([], "--param", "-p", help="method parameter key=value (JSON value), repeatable, e.g. -p decay_factor=0.5"),
        layer: int = typer.Option(0, "--layer", callback=at_least(0), help="layer index the head belongs to"),
        head: int = typer.Option(0, "--head", callback=at_least(0), help="head index"),
        step: int = typer.Option(0, "--step", callback=at_least(0), help="denoising step"),
    ) -> None:
        """Build the pattern a method gives one head over a layout and print its summary."""
        from .. import methods as M
        from ..layout import TokenLayout

        position = text_position or ("prefix" if text else "none")
        layout = TokenLayout(frames, height, width, text_tokens=text, text_position=position)
        pattern = M.build_for(name, layout, block_size, parse_params(param), layer=layer, head=head, step=step)
        console.print("dense (this head runs full attention)" if pattern is None else pattern.describe())
