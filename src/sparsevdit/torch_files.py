"""Loading our torch files (profiles, training checkpoints) without running code from them.

``torch.load(weights_only=True)`` rebuilds tensors and plain data (dicts, lists, numbers, strings)
only; a pickle naming any other callable is refused. Our writers store nothing else (dataclasses go
in as dicts). Every failure becomes the caller's error type with a message saying what was expected.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6


def _kind_of(path: Path) -> str:
    """A guess at what a file that is not a torch file is, for the error message."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head.startswith((b"{", b"[")):
        return "JSON (a plan file?)"
    return "not a torch file" if head else "an empty file"


def load_plain(path: str | os.PathLike, *, what: str, error: type[Exception], map_location: Any = "cpu") -> Any:
    """``torch.load`` of tensors and plain data only; ``error(message)`` naming ``what`` was expected."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc} (expected {what})") from None
    if magic != _ZIP_MAGIC:
        raise error(f"{path} is {_kind_of(path)}, expected {what}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise error(
            f"{path} holds objects other than tensors and plain data, which are refused (unpickling them could "
            f"run code); expected {what}"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise error(f"{path} is a damaged or truncated torch file ({detail}); expected {what}") from None
