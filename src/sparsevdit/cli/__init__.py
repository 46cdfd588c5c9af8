"""The ``sparsevdit`` command line: ``app`` (the console script ``sparsevdit = "sparsevdit.cli:app"``).

One module per command group; each has ``register(app)`` and never imports this package, so there is
no import cycle. Shared validators and the one-line error for bad input live in ``common.py``.
"""

from __future__ import annotations

import typer

from . import bench, demo, generate, methods, patterns, report, search, train
from .common import CommandGroup, console

__all__ = ["app", "console", "main"]

app = typer.Typer(
    cls=CommandGroup,
    help="Block-sparse attention for video diffusion transformers: patterns, kernels, plans.",
    no_args_is_help=True,
    add_completion=False,
)

for _module in (patterns, methods, demo, train, report, search, generate, bench):
    _module.register(app)


def main() -> None:  # pragma: no cover - the console script and `python -m sparsevdit`
    app()
