"""Reading JSON from files we did not write: every way a file can be wrong is one ``StrictJSONError``.

Python's ``json`` accepts what other readers refuse (``NaN``, ``Infinity``, repeated keys, where the
last silently wins) and fails in many ways (``UnicodeDecodeError``, ``RecursionError`` on deep
nesting, ``ValueError`` on integers of thousands of digits, ``MemoryError`` on huge files). Here each
of those is refused with a message saying what was wrong.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

MAX_BYTES = 32 * 2**20  # the largest plan we write (60 layers x 40 heads x 50 step ranges) is ~10 MB
MAX_DEPTH = 64  # our files nest at most ~8 deep; json recurses per level and overflows near 1000


class StrictJSONError(ValueError):
    """A file that is not strict JSON within our limits; the message says what is wrong."""


def _no_constant(token: str) -> Any:
    raise StrictJSONError(f"{token} is not JSON (JSON has no NaN or infinity)")


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"key {key!r} appears twice in one object (which one was meant?)")
        out[key] = value
    return out


def _check_tree(value: Any) -> None:
    """Nesting depth and float range, without recursion (a deep value must not overflow us)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            # json reads 1e400 as infinity without a word
            raise StrictJSONError("a number too large for a float (JSON has no infinity)")
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise StrictJSONError(f"JSON nested deeper than {MAX_DEPTH} levels")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))


def parse(text: str) -> Any:
    """Strict JSON from ``text``; StrictJSONError for anything else."""
    try:
        value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_repeats)
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None
    except RecursionError:
        raise StrictJSONError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except StrictJSONError:
        raise
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise StrictJSONError(f"invalid JSON value ({exc})") from None
    _check_tree(value)
    return value


def read(path: str | os.PathLike, *, max_bytes: int | None = None) -> Any:
    """Strict JSON from the UTF-8 file at ``path`` (at most ``max_bytes``, default MAX_BYTES); OSError if
    it cannot be read."""
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    with open(Path(path), "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise StrictJSONError(f"file larger than {max_bytes / 2**20:g} MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StrictJSONError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    return parse(text)
