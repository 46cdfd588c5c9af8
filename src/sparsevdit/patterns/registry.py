"""String-keyed registry of pattern builders; third parties add theirs with ``@register("name")``."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..layout import TokenLayout
from .base import BlockPattern, check_block_grid, num_blocks

# A builder takes (layout, *, block_size, **params) and returns the bool block mask
# [q_blocks, kv_blocks], or (mask, ordering) when the pattern is defined in another token ordering.
Builder = Callable[..., Any]


class PatternError(ValueError):
    """A pattern name or parameter that cannot be built; the message says what would be valid."""


@dataclass(frozen=True)
class ParamDoc:
    name: str
    default: Any
    help: str


@dataclass(frozen=True)
class _Entry:
    name: str
    builder: Builder
    summary: str
    params: tuple[ParamDoc, ...]
    revision: int


_REGISTRY: dict[str, _Entry] = {}
_REVISION = 0  # counts registrations: a name registered again (override=True) gets a new revision


def _parse_doc(builder: Builder) -> tuple[str, dict[str, str]]:
    """First docstring line, and ``name: help`` lines of the docstring's ``Parameters:`` section."""
    doc = inspect.getdoc(builder) or ""
    lines = doc.splitlines()
    summary = lines[0] if lines else ""
    helps: dict[str, str] = {}
    in_params, current = False, None
    for line in lines[1:]:
        if line.strip() == "Parameters:":
            in_params = True
            continue
        if not in_params:
            continue
        if line.startswith("    ") and current and not line.strip().endswith(":"):
            helps[current] += " " + line.strip()
        elif ":" in line and line.strip() and not line.startswith("    "):
            current, text = line.split(":", 1)
            current = current.strip()
            helps[current] = text.strip()
        elif line.startswith("    ") and current:
            helps[current] += " " + line.strip()
    return summary, helps


def register(name: str, *, override: bool = False) -> Callable[[Builder], Builder]:
    """Register a pattern builder ``fn(layout, *, block_size, **params)`` under ``name``.

    The builder returns a bool block mask ``[q_blocks, kv_blocks]`` (frame-major ordering) or a tuple
    ``(mask, ordering)``. Its keyword parameters, with defaults, are the pattern's parameters; a
    ``Parameters:`` section in its docstring (``name: help`` lines) documents them for the CLI.
    A name already registered is refused unless ``override=True`` (plans name patterns: a silent
    replacement would change what every plan naming it computes).
    """
    if not isinstance(name, str) or not name:
        raise PatternError(f"a pattern name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not override:
        raise PatternError(f"pattern {name!r} is already registered; pass override=True to replace it")

    def wrap(builder: Builder) -> Builder:
        sig = inspect.signature(builder)
        summary, helps = _parse_doc(builder)
        params = tuple(
            ParamDoc(p.name, None if p.default is inspect.Parameter.empty else p.default, helps.get(p.name, ""))
            for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "block_size"
        )
        global _REVISION
        _REVISION += 1
        _REGISTRY[name] = _Entry(name, builder, summary, params, _REVISION)
        return builder

    return wrap


def available() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise PatternError(f"unknown pattern {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def revision(name: str) -> int:
    """Which registration of ``name`` is current: caches of built patterns by recipe key on it."""
    return _entry(name).revision


def parameters(name: str) -> tuple[ParamDoc, ...]:
    return _entry(name).params


def summary(name: str) -> str:
    return _entry(name).summary


def check_params(name: str, params: dict) -> dict:
    """Params completed with defaults; unknown names raise PatternError listing the valid ones."""
    entry = _entry(name)
    known = {p.name: p.default for p in entry.params}
    unknown = sorted(set(params) - set(known))
    if unknown:
        valid = ", ".join(known) or "none"
        raise PatternError(f"pattern {name!r} has no parameter {', '.join(unknown)}; its parameters: {valid}")
    full = {**known, **params}
    for key, value in params.items():
        _check_type(name, key, known[key], value)
    for key, value in full.items():
        try:
            json.dumps(value, allow_nan=False)  # a plan file holds them (and JSON has no NaN)
        except (TypeError, ValueError) as exc:
            raise PatternError(
                f"pattern {name!r}: {key} must be a JSON value (finite number, string, list, object), got {value!r} ({exc})"
            ) from None
    return full


def _check_type(name: str, key: str, default: Any, value: Any) -> None:
    """A parameter whose default is a bool, int, float or str takes that type (an int for a float is
    fine): 4.0 for a count, "3" for a seed or 1 for true would otherwise be taken silently or crash
    deep inside a builder. Ranges are the builder's to check."""
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "a string"
    else:  # no default type (None): the builder checks
        return
    if not ok:
        raise PatternError(f"pattern {name!r}: {key} must be {expected}, got {value!r}")


def build(name: str, layout: TokenLayout, *, block_size: int = 128, **params: Any) -> BlockPattern:
    """Build pattern ``name`` over ``layout`` with ``block_size``-token blocks."""
    if not isinstance(layout, TokenLayout):
        raise PatternError(f"layout must be a sparsevdit.TokenLayout, got {type(layout).__name__}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise PatternError(f"block_size must be a positive integer, got {block_size!r}")
    try:
        check_block_grid(layout, block_size)
    except ValueError as exc:
        raise PatternError(str(exc)) from None
    full = check_params(name, params)
    result = _entry(name).builder(layout, block_size=block_size, **full)
    mask, ordering = result if isinstance(result, tuple) else (result, "frame_major")
    return BlockPattern.from_block_mask(name, full, layout, block_size, mask, ordering)


def empty_mask(layout: TokenLayout, block_size: int) -> torch.Tensor:
    nb = num_blocks(layout.num_tokens, block_size)
    return torch.zeros(nb, nb, dtype=torch.bool)
