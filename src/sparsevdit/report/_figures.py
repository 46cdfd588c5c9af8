"""Shared matplotlib plumbing of the report pictures: the Agg backend and atomic PNG writing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..atomic_files import saving


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically (a failure leaves no file behind) and close it either way."""
    plt = pyplot()
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder: give a file name ending in .png")
        with saving(path, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path
