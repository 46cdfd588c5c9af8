"""Writing files so that a failure (an exception, SIGINT, a full disk) never leaves a half-written or
mixed result: every write goes to a temporary name beside the target and is renamed over it at the end.

Files get ordinary permissions (0666 less the umask, usually 0644), not the 0600 of ``mkstemp``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path, directory: bool = False, suffix: str = ".tmp") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def saving(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error it replaces ``path``,
    otherwise it is removed and ``path`` is untouched. For writers that take a path (torch.save, videos).
    ``suffix``: the temporary name's ending, for writers that pick the format by it (``".tmp.mp4"``)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give a file name")
    tmp = _temp_beside(path, suffix=suffix)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with saving(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with saving(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _no_nan(value: Any, where: str = "") -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"refusing to write {value} at {where or 'the top level'}: JSON has no NaN or infinity")
    if isinstance(value, dict):
        for k, v in value.items():
            _no_nan(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_nan(v, f"{where}[{i}]")


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (an infinite PSNR, a missing value)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def non_finite_as_null(value: Any) -> Any:
    """A copy with every NaN / infinity replaced by None, for results where one is a real answer (the PSNR of
    identical videos is infinite): ``write_json`` refuses them, this says "no finite value" explicitly."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: non_finite_as_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [non_finite_as_null(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Any, *, indent: int = 1) -> Path:
    """Strict JSON (a NaN or infinity is an error, not a ``NaN`` token other readers reject), atomically."""
    _no_nan(data)
    return write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


@contextlib.contextmanager
def building_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block ends without an error its files
    are moved into ``path`` (created if missing; same-named files replaced, others kept), otherwise the
    temporary folder is removed and ``path`` is untouched. A run's outputs land together or not at all."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    tmp = _temp_beside(path, directory=True)
    try:
        yield tmp
        mode = 0o666 & ~_umask()
        for item in tmp.rglob("*"):
            if item.is_file():
                os.chmod(item, mode)
        path.mkdir(parents=True, exist_ok=True)
        _merge(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _merge(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        target = dst / item.name
        if item.is_dir() and target.is_dir():
            _merge(item, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
