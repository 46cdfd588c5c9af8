"""Pictures of block patterns (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from ..atomic_files import saving
from ..patterns import BlockPattern


def save_block_mask_png(pattern: BlockPattern, path: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give a file name ending in .png")
    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=110)
    ax.imshow(pattern.block_mask.numpy(), cmap="Blues", vmin=0, vmax=1.25, interpolation="nearest")
    params = ", ".join(f"{k}={v}" for k, v in pattern.params.items() if v is not None)
    ax.set_title(title or f"{pattern.name}({params})\ndensity {pattern.density:.1%}", fontsize=9)
    ax.set_xlabel(f"key block ({pattern.block_size} tokens, {pattern.ordering})", fontsize=8)
    ax.set_ylabel("query block", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    try:
        with saving(path, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path
