"""Reading JSON from files we did not write: every way a file can be wrong is one ``StrictJSONError``.

Python's ``json`` accepts what other readers refuse (``NaN``, ``Infinity``, repeated keys, where the
last silently wins) and fails in many ways (``UnicodeDecodeError``, ``RecursionError`` on deep
nesting, ``ValueError`` on integers of thousands of digits, ``MemoryError`` on huge files). Here each
of those is refused with a message saying what was wrong.
"""

from __future__ import annotations

import json
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


def _depth(value: Any) -> int:
    """Nesting depth of lists and objects, without recursion (a deep value must not overflow us)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                break
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


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
    if _depth(value) > MAX_DEPTH:
        raise StrictJSONError(f"JSON nested deeper than {MAX_DEPTH} levels")
    return value


def read(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> Any:
    """Strict JSON from the UTF-8 file at ``path`` (at most ``max_bytes``); OSError if it cannot be read."""
    with open(Path(path), "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise StrictJSONError(f"file larger than {max_bytes / 2**20:g} MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StrictJSONError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    return parse(text)
