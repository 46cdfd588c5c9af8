"""SparsityPlan: a versioned JSON file saying which pattern each head of each layer uses.

File layout (version 1)::

    {"format": "sparsevdit-plan", "version": 1,
     "model": {"class_name": ..., "num_layers": ..., "num_heads": ..., "head_dim": ...},
     "layout": {"frames": ..., "height": ..., "width": ..., "text_tokens": ..., "text_position": ...},
     "block_size": 128,
     "layers": [{"layer": 0, "step_start": 0, "step_end": null,
                 "heads": [{"pattern": "diagonal", "params": {"width": 2048}}, ...]}, ...],
     "metadata": {...}}

A layer with no entry covering a step runs dense attention (the model's own processor).
Step ranges are [step_start, step_end), step_end null meaning "to the end".
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import patterns as pattern_registry
from .layout import TokenLayout
from .patterns import BlockPattern, PatternError

PLAN_FORMAT = "sparsevdit-plan"
PLAN_VERSION = 1


class PlanError(ValueError):
    """A plan that cannot be used: names the field, the value found and the value expected."""

    def __init__(self, field: str, found: Any, expected: str):
        self.field, self.found, self.expected = field, found, expected
        super().__init__(f"plan field {field!r}: found {found!r}, expected {expected}")


@dataclass(frozen=True)
class ModelSignature:
    """What a plan must match in the model it is applied to."""

    class_name: str
    num_layers: int
    num_heads: int
    head_dim: int

    def to_dict(self) -> dict:
        return {"class_name": self.class_name, "num_layers": self.num_layers, "num_heads": self.num_heads, "head_dim": self.head_dim}


@dataclass(frozen=True)
class HeadSpec:
    pattern: str
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"pattern": self.pattern, "params": self.params}


@dataclass(frozen=True)
class LayerEntry:
    layer: int
    heads: tuple[HeadSpec, ...]
    step_start: int = 0
    step_end: int | None = None

    def covers(self, step: int) -> bool:
        return self.step_start <= step and (self.step_end is None or step < self.step_end)

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "step_start": self.step_start,
            "step_end": self.step_end,
            "heads": [h.to_dict() for h in self.heads],
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(d: dict, key: str, where: str, expected: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise PlanError(f"{where}{key}", None, expected)
    return d[key]


def _positive_int(d: dict, key: str, where: str) -> int:
    value = _require(d, key, where, "a positive integer")
    if not _is_int(value) or value < 1:
        raise PlanError(f"{where}{key}", value, "a positive integer")
    return value


@dataclass
class SparsityPlan:
    model: ModelSignature
    layout: TokenLayout
    block_size: int
    entries: list[LayerEntry]
    metadata: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # construction -------------------------------------------------------------------------------
    @classmethod
    def uniform(
        cls, model: ModelSignature, layout: TokenLayout, pattern: str, params: dict | None = None, *, block_size: int = 128
    ) -> "SparsityPlan":
        """Every head of every layer uses one pattern."""
        heads = tuple(HeadSpec(pattern, dict(params or {})) for _ in range(model.num_heads))
        return cls(model, layout, block_size, [LayerEntry(i, heads) for i in range(model.num_layers)])

    def validate(self) -> None:
        """Raise PlanError for anything a loaded plan could get wrong (see ``from_dict``)."""
        self.from_dict(self.to_dict())

    # queries -------------------------------------------------------------------------------------
    def entry_for(self, layer: int, step: int = 0) -> LayerEntry | None:
        for entry in self.entries:
            if entry.layer == layer and entry.covers(step):
                return entry
        return None

    def patterns_for(self, layer: int, step: int = 0) -> list[BlockPattern] | None:
        """Each head's BlockPattern at ``layer`` and denoising ``step``; None if the layer runs dense."""
        if not 0 <= layer < self.model.num_layers:
            raise IndexError(f"layer {layer} out of range: the plan's model has {self.model.num_layers} layers")
        entry = self.entry_for(layer, step)
        if entry is None:
            return None
        return [self._pattern(h) for h in entry.heads]

    def _pattern(self, head: HeadSpec) -> BlockPattern:
        key = (head.pattern, json.dumps(head.params, sort_keys=True))
        if key not in self._cache:
            self._cache[key] = pattern_registry.build(head.pattern, self.layout, block_size=self.block_size, **head.params)
        return self._cache[key]

    def density(self, layer: int, step: int = 0) -> float:
        """Mean attention density of the layer's heads at ``step`` (1.0 where it runs dense)."""
        pats = self.patterns_for(layer, step)
        return 1.0 if pats is None else sum(p.density for p in pats) / len(pats)

    def check_model(self, model: ModelSignature, layout: TokenLayout | None = None) -> None:
        """Refuse with PlanError if this plan was made for another model or layout."""
        for key, expected in model.to_dict().items():
            found = getattr(self.model, key)
            if found != expected:
                raise PlanError(f"model.{key}", found, f"{expected!r} (the model this plan is applied to)")
        if layout is not None:
            for key, expected in layout.to_dict().items():
                found = getattr(self.layout, key)
                if found != expected:
                    raise PlanError(f"layout.{key}", found, f"{expected!r} (the layout of the video being generated)")

    # serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model": self.model.to_dict(),
            "layout": self.layout.to_dict(),
            "block_size": self.block_size,
            "layers": [e.to_dict() for e in self.entries],
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: Any, *, model: ModelSignature | None = None, layout: TokenLayout | None = None) -> "SparsityPlan":
        if not isinstance(data, dict):
            raise PlanError("<top>", type(data).__name__, "a JSON object")
        fmt = data.get("format")
        if fmt != PLAN_FORMAT:
            raise PlanError("format", fmt, repr(PLAN_FORMAT))
        version = data.get("version")
        if not _is_int(version) or version != PLAN_VERSION:
            raise PlanError("version", version, f"{PLAN_VERSION} (the plan version this sparsevdit reads)")

        m = _require(data, "model", "", "an object with class_name, num_layers, num_heads, head_dim")
        if not isinstance(m, dict):
            raise PlanError("model", m, "an object with class_name, num_layers, num_heads, head_dim")
        class_name = _require(m, "class_name", "model.", "a model class name")
        if not isinstance(class_name, str) or not class_name:
            raise PlanError("model.class_name", class_name, "a model class name")
        sig = ModelSignature(class_name, *(_positive_int(m, k, "model.") for k in ("num_layers", "num_heads", "head_dim")))

        lay = _require(data, "layout", "", "an object with frames, height, width, text_tokens, text_position")
        if not isinstance(lay, dict):
            raise PlanError("layout", lay, "an object with frames, height, width, text_tokens, text_position")
        unknown = sorted(set(lay) - {"frames", "height", "width", "text_tokens", "text_position"})
        if unknown:
            raise PlanError(f"layout.{unknown[0]}", lay[unknown[0]], "no such field (frames, height, width, text_tokens, text_position)")
        try:
            token_layout = TokenLayout(**lay)
        except (TypeError, ValueError) as exc:
            named = re.match(r"TokenLayout\.(\w+)", str(exc))
            if named and named.group(1) in lay:
                raise PlanError(f"layout.{named.group(1)}", lay[named.group(1)], f"a valid value ({exc})") from None
            raise PlanError("layout", lay, f"a valid token layout ({exc})") from None

        block_size = _positive_int(data, "block_size", "")
        layers = _require(data, "layers", "", "a list of layer entries")
        if not isinstance(layers, list):
            raise PlanError("layers", type(layers).__name__, "a list of layer entries")

        built: dict[tuple, None] = {}
        entries = []
        for i, raw in enumerate(layers):
            where = f"layers[{i}]."
            if not isinstance(raw, dict):
                raise PlanError(f"layers[{i}]", raw, "an object with layer, heads and optional step_start, step_end")
            layer = _require(raw, "layer", where, f"a layer index in 0..{sig.num_layers - 1}")
            if not _is_int(layer) or not 0 <= layer < sig.num_layers:
                raise PlanError(f"{where}layer", layer, f"a layer index in 0..{sig.num_layers - 1}")
            start = raw.get("step_start", 0)
            if not _is_int(start) or start < 0:
                raise PlanError(f"{where}step_start", start, "an integer >= 0")
            end = raw.get("step_end")
            if end is not None and (not _is_int(end) or end <= start):
                raise PlanError(f"{where}step_end", end, f"null or an integer > step_start ({start})")
            heads_raw = _require(raw, "heads", where, f"a list of {sig.num_heads} head entries")
            if not isinstance(heads_raw, list) or len(heads_raw) != sig.num_heads:
                found = len(heads_raw) if isinstance(heads_raw, list) else heads_raw
                raise PlanError(f"{where}heads", found, f"a list of {sig.num_heads} head entries (model.num_heads)")
            heads = []
            for h, head in enumerate(heads_raw):
                hwhere = f"{where}heads[{h}]"
                if not isinstance(head, dict):
                    raise PlanError(hwhere, head, 'an object {"pattern": ..., "params": {...}}')
                name = head.get("pattern")
                if name not in pattern_registry.available():
                    raise PlanError(f"{hwhere}.pattern", name, f"one of {', '.join(pattern_registry.available())}")
                params = head.get("params", {})
                if not isinstance(params, dict):
                    raise PlanError(f"{hwhere}.params", params, "an object of pattern parameters")
                key = (name, json.dumps(params, sort_keys=True))
                if key not in built:
                    try:
                        pattern_registry.build(name, token_layout, block_size=block_size, **params)
                    except PatternError as exc:
                        raise PlanError(f"{hwhere}.params", params, f"valid parameters of {name!r} ({exc})") from None
                    built[key] = None
                heads.append(HeadSpec(name, params))
            entry = LayerEntry(layer, tuple(heads), start, end)
            for prev in entries:
                if prev.layer == layer and _overlap(prev, entry):
                    raise PlanError(
                        f"{where}step_start", start,
                        f"a step range not overlapping layer {layer}'s [{prev.step_start}, {prev.step_end})",
                    )
            entries.append(entry)

        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict):
            raise PlanError("metadata", metadata, "an object")
        plan = cls.__new__(cls)
        plan.model, plan.layout, plan.block_size, plan.entries, plan.metadata = sig, token_layout, block_size, entries, metadata
        plan._cache = {}
        if model is not None or layout is not None:
            plan.check_model(model or sig, layout)
        return plan

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a failed save never leaves a half-written plan."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, model: ModelSignature | None = None, layout: TokenLayout | None = None
    ) -> "SparsityPlan":
        """Read and validate a plan; with ``model``/``layout``, also refuse a plan made for another."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise PlanError("<file>", str(path), f"a readable plan file ({exc.strerror})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError("<file>", f"invalid JSON at line {exc.lineno} column {exc.colno}", "a JSON plan file") from None
        return cls.from_dict(data, model=model, layout=layout)


def _overlap(a: LayerEntry, b: LayerEntry) -> bool:
    a_end = a.step_end if a.step_end is not None else float("inf")
    b_end = b.step_end if b.step_end is not None else float("inf")
    return a.step_start < b_end and b.step_start < a_end
