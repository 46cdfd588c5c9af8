"""SparsityPlan: a versioned JSON file saying which pattern each head of each layer uses.

File layout (version 1)::

    {"format": "sparsevdit-plan", "version": 1,
     "model": {"class_name": ..., "num_layers": ..., "num_heads": ..., "head_dim": ...},
     "layout": {"frames": ..., "height": ..., "width": ..., "text_tokens": ..., "text_position": ...},
     "block_size": 128,
     "layers": [{"layer": 0, "step_start": 0, "step_end": null,
                 "heads": [{"pattern": "diagonal", "params": {"width": 2048}},
                           {"method": "radial", "params": {"dense_steps": 12}}, ...]}, ...],
     "metadata": {...}}

A head names either a ``pattern`` (a block mask of ``patterns``, fixed) or a ``method`` (of
``methods``, which builds the head's mask for its layer, head and step; a head a method leaves dense
at a step, e.g. below its ``dense_steps``, runs dense, and a layer whose heads all do so runs the
model's own attention).

A layer with no entry covering a step runs dense attention (the model's own processor).
Step ranges are [step_start, step_end), step_end null meaning "to the end"; ``step_start``,
``step_end``, a head's ``params`` and ``metadata`` may be left out (0, null, defaults, {}).

Loading is strict: strict UTF-8 JSON (no NaN / Infinity, no repeated key, bounded size and nesting),
no unknown key at any level (``metadata`` is free-form), integers where integers are meant (never a
float or a bool), sizes within ``MAX_*``, and every head's pattern built once to check its parameters.
Anything else is a PlanError naming the field.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import methods as method_registry
from . import patterns as pattern_registry
from .patterns.base import MAX_BLOCKS_PER_SIDE
from . import strict_json
from .atomic_files import write_text
from .layout import TokenLayout
from .patterns import BlockPattern, PatternError

PLAN_FORMAT = "sparsevdit-plan"
PLAN_VERSION = 1

# The fields of each level of a version-1 plan: any other key is refused (a typo such as "param" or
# "step_stop" would otherwise be ignored and the plan run differently from what its author wrote).
TOP_FIELDS = ("format", "version", "model", "layout", "block_size", "layers", "metadata")
MODEL_FIELDS = ("class_name", "num_layers", "num_heads", "head_dim")
LAYOUT_FIELDS = ("frames", "height", "width", "text_tokens", "text_position")
LAYER_FIELDS = ("layer", "step_start", "step_end", "heads")
HEAD_FIELDS = ("pattern", "method", "params")

# Sizes beyond any video DiT: refused, as a typo or a hostile file, before anything loops over them or
# allocates for them. A block mask is MAX_BLOCKS^2 bools; HunyuanVideo at 720p has ~930 blocks of 128.
MAX_MODEL_SIZE = 2**16  # num_layers, num_heads, head_dim
MAX_BLOCKS = MAX_BLOCKS_PER_SIDE  # blocks per side of the attention map (patterns.build's own limit)
MAX_BLOCK_SIZE = 2**24  # tokens per block: beyond any sequence (one block), and safe in int64 offsets


class PlanError(ValueError):
    """A plan that cannot be used: names the field, the value found and the value expected."""

    def __init__(self, field: str, found: Any, expected: str):
        self.field, self.found, self.expected = field, found, expected
        super().__init__(f"plan field {_short(field)!r}: found {_short(repr(found))}, expected {expected}")


def _short(text: str, most: int = 300) -> str:
    """A hostile file's value may be megabytes long: the message shows its start."""
    return text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"


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
    """One head of a plan entry: a ``pattern`` and its parameters, or (``pattern`` None) a ``method``."""

    pattern: str | None
    params: dict = field(default_factory=dict)
    method: str | None = None

    @classmethod
    def of_method(cls, method: str, params: dict | None = None) -> "HeadSpec":
        return cls(None, dict(params or {}), method)

    @property
    def label(self) -> str:
        """The pattern's name, or ``method:NAME``: what pictures and summaries call this head."""
        return self.pattern if self.method is None else f"method:{self.method}"

    def to_dict(self) -> dict:
        kind = {"pattern": self.pattern} if self.method is None else {"method": self.method}
        return {**kind, "params": copy.deepcopy(self.params)}  # a copy: HeadSpec is frozen


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


def _positive_int(d: dict, key: str, where: str, most: int | None = None) -> int:
    expected = "a positive integer" + (f" (at most {most})" if most is not None else "")
    value = _require(d, key, where, expected)
    if not _is_int(value) or value < 1 or (most is not None and value > most):
        raise PlanError(f"{where}{key}", value, expected)
    return value


def _known_keys(d: dict, allowed: tuple[str, ...], where: str) -> None:
    """Refuse the first key (in file order) that is not one of ``allowed``."""
    for key in d:
        if key not in allowed:
            raise PlanError(f"{where}{key}", d[key], f"no such field (the fields here: {', '.join(allowed)})")


def _json_data(value: Any, where: str) -> None:
    """Refuse what a plan file cannot hold exactly: NaN, infinity, non-string keys, objects, nesting
    deeper than a plan file may have (checked without recursion: a deep value must not overflow us)."""
    stack = [(value, where, 1)]
    while stack:
        item, at, depth = stack.pop()
        if depth > strict_json.MAX_DEPTH and isinstance(item, (dict, list, tuple)):
            raise PlanError(at, type(item).__name__, f"data nested at most {strict_json.MAX_DEPTH} levels deep")
        if isinstance(item, float) and not math.isfinite(item):
            raise PlanError(at, item, "a finite number (JSON has no NaN or infinity)")
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise PlanError(at, k, "string keys (JSON object keys are strings)")
                stack.append((v, f"{at}.{k}", depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{at}[{i}]", depth + 1) for i, v in enumerate(item))
        elif item is not None and not isinstance(item, (str, int, float)):
            raise PlanError(at, type(item).__name__, "a JSON value (object, list, string, number, true/false, null)")


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

    @classmethod
    def for_method(
        cls, model: ModelSignature, layout: TokenLayout, method: str, params: dict | None = None, *, block_size: int = 128
    ) -> "SparsityPlan":
        """Every head of every layer uses ``method`` (its ``dense_steps`` / ``dense_layers`` included)."""
        heads = tuple(HeadSpec.of_method(method, params) for _ in range(model.num_heads))
        return cls(model, layout, block_size, [LayerEntry(i, heads) for i in range(model.num_layers)],
                   {"method": method, "params": copy.deepcopy(dict(params or {}))})

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
        """Each head's BlockPattern at ``layer`` and denoising ``step``; None if the layer runs dense
        (no entry covers the step, or every head names a method that leaves it dense there)."""
        if not 0 <= layer < self.model.num_layers:
            raise IndexError(f"layer {layer} out of range: the plan's model has {self.model.num_layers} layers")
        entry = self.entry_for(layer, step)
        if entry is None:
            return None
        built = [self._pattern(h, layer, i, step) for i, h in enumerate(entry.heads)]
        if all(p is None for p in built):
            return None
        return [self._pattern(HeadSpec("dense"), layer, i, step) if p is None else p for i, p in enumerate(built)]

    def _pattern(self, head: HeadSpec, layer: int, index: int, step: int) -> BlockPattern | None:
        if head.method is not None:
            return self._method_pattern(head, layer, index, step)
        # by recipe, and by the builder's registration: a pattern registered again builds anew
        key = (head.pattern, pattern_registry.revision(head.pattern), json.dumps(head.params, sort_keys=True))
        if key not in self._cache:
            self._cache[key] = pattern_registry.build(head.pattern, self.layout, block_size=self.block_size, **head.params)
        return self._cache[key]

    def _method_pattern(self, head: HeadSpec, layer: int, index: int, step: int) -> BlockPattern | None:
        cls = method_registry.get_method(head.method)
        params = method_registry.parse_params(cls, head.params)
        if step < params.dense_steps or layer in params.dense_layers:
            return None
        # a method's mask depends on the (layer, head, step) it declares in ``varies`` only
        where = tuple(v if name in cls.varies else None for name, v in (("layer", layer), ("head", index), ("step", step)))
        key = ("method", cls, json.dumps(head.params, sort_keys=True), where)
        if key not in self._cache:
            self._cache[key] = method_registry.build_for(cls, self.layout, self.block_size, params,
                                                        layer=layer, head=index, step=step)
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
            "metadata": copy.deepcopy(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Any, *, model: ModelSignature | None = None, layout: TokenLayout | None = None) -> "SparsityPlan":
        """Validate ``data`` (a parsed plan file) into a plan; PlanError names the first bad field."""
        if not isinstance(data, dict):
            raise PlanError("<top>", type(data).__name__, "a JSON object")
        fmt = data.get("format")
        if fmt != PLAN_FORMAT:
            raise PlanError("format", fmt, repr(PLAN_FORMAT))
        version = data.get("version")
        if not _is_int(version) or version != PLAN_VERSION:
            raise PlanError("version", version, f"{PLAN_VERSION} (the plan version this sparsevdit reads)")
        # after format and version: a file of another kind or version has other fields
        _known_keys(data, TOP_FIELDS, "")

        sig = _model(data)
        token_layout = _layout(data)
        block_size = _positive_int(data, "block_size", "", MAX_BLOCK_SIZE)
        blocks = pattern_registry.num_blocks(token_layout.num_tokens, block_size)
        if blocks > MAX_BLOCKS:
            raise PlanError("block_size", block_size, f"a block size giving at most {MAX_BLOCKS} blocks of the "
                            f"{token_layout.num_tokens}-token layout (this one gives {blocks})")
        layers = _require(data, "layers", "", "a list of layer entries")
        if not isinstance(layers, list):
            raise PlanError("layers", type(layers).__name__, "a list of layer entries")

        built: set[tuple] = set()
        entries: list[LayerEntry] = []
        for i, raw in enumerate(layers):
            entry = _layer_entry(raw, f"layers[{i}]", sig, token_layout, block_size, built)
            for prev in entries:
                if prev.layer == entry.layer and _overlap(prev, entry):
                    raise PlanError(
                        f"layers[{i}].step_start", entry.step_start,
                        f"a step range not overlapping layer {entry.layer}'s [{prev.step_start}, {prev.step_end})",
                    )
            entries.append(entry)

        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict):
            raise PlanError("metadata", metadata, "an object")
        _json_data(metadata, "metadata")
        metadata = copy.deepcopy(metadata)
        plan = cls.__new__(cls)
        plan.model, plan.layout, plan.block_size, plan.entries, plan.metadata = sig, token_layout, block_size, entries, metadata
        plan._cache = {}
        if model is not None or layout is not None:
            plan.check_model(model or sig, layout)
        return plan

    def to_json(self) -> str:
        """The plan file's text; PlanError where the metadata holds what JSON cannot (NaN, objects)."""
        _json_data(self.metadata, "metadata")  # before to_dict copies it
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a failed save never leaves a half-written plan), as an ordinary 0644 file."""
        text = self.to_json()  # before touching the file system
        return write_text(path, text)

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, model: ModelSignature | None = None, layout: TokenLayout | None = None
    ) -> "SparsityPlan":
        """Read and validate a plan; with ``model``/``layout``, also refuse a plan made for another."""
        try:
            data = strict_json.read(path)
        except OSError as exc:
            raise PlanError("<file>", str(path), f"a readable plan file ({exc.strerror or exc})") from None
        except strict_json.StrictJSONError as exc:
            raise PlanError("<file>", str(exc), "a JSON plan file (UTF-8, strict JSON)") from None
        return cls.from_dict(data, model=model, layout=layout)


class MethodPlans:
    """A method applied without a plan file (``sparsevdit.apply(model, method=...)``): the integrations
    learn the token layout only when a forward shows it, so this makes the plan of each layout then
    (``SparsityPlan.for_method``), keeping the last few. The method and its parameters are checked here,
    before any forward."""

    KEEP = 4  # layouts remembered (a user alternating a few video sizes re-builds nothing)

    def __init__(self, model: ModelSignature, method: str, params: dict | None = None, *, block_size: int = 128):
        cls = method_registry.get_method(method)  # MethodError naming the methods
        method_registry.parse_params(cls, params)  # MethodError naming the parameters
        if not _is_int(block_size) or not 1 <= block_size <= MAX_BLOCK_SIZE:
            raise method_registry.MethodError(f"method {method!r}: block_size must be an integer in 1..{MAX_BLOCK_SIZE}, "
                                              f"got {block_size!r}")
        self.model, self.method, self.params, self.block_size = model, method, copy.deepcopy(dict(params or {})), block_size
        self._plans: dict[TokenLayout, SparsityPlan] = {}

    def model_plan_check(self, model: ModelSignature) -> None:
        """PlanError if these plans are for another model (as ``SparsityPlan.check_model``)."""
        for key, expected in model.to_dict().items():
            found = getattr(self.model, key)
            if found != expected:
                raise PlanError(f"model.{key}", found, f"{expected!r} (the model this method is applied to)")

    def for_layout(self, layout: TokenLayout) -> SparsityPlan:
        plan = self._plans.pop(layout, None)
        if plan is None:
            plan = self._build(layout)
            if len(self._plans) >= self.KEEP:
                self._plans.pop(next(iter(self._plans)))
        self._plans[layout] = plan  # most recent last
        return plan

    def _build(self, layout: TokenLayout) -> SparsityPlan:
        return SparsityPlan.for_method(self.model, layout, self.method, self.params, block_size=self.block_size)

    def __repr__(self) -> str:
        return f"MethodPlans({self.method!r}, {self.params!r}, block_size={self.block_size})"


class DensePlans(MethodPlans):
    """Every head dense at every layout: what ``apply(model, ultravico=...)`` without a plan or method runs
    (dense attention through our backends, so the damping applies)."""

    def __init__(self, model: ModelSignature, *, block_size: int = 128):
        self.model, self.method, self.params, self.block_size = model, "dense", {}, block_size
        self._plans = {}

    def _build(self, layout: TokenLayout) -> SparsityPlan:
        return SparsityPlan.uniform(self.model, layout, "dense", block_size=self.block_size)


class DynamicPlans(DensePlans):
    """A dynamic method (``methods.dynamic``) applied to a model: its masks are selected inside each
    attention call from the layer's q and k (``.dynamic``), so the plan of a layout has no entries (it
    only carries the layout the forwards are checked against)."""

    def __init__(self, model: ModelSignature, method: str, params: dict | None = None, *, block_size: int = 128):
        from .methods.dynamic import DynamicPatterns

        if not _is_int(block_size) or not 1 <= block_size <= MAX_BLOCK_SIZE:
            raise method_registry.MethodError(f"method {method!r}: block_size must be an integer in 1..{MAX_BLOCK_SIZE}, "
                                              f"got {block_size!r}")
        self.dynamic = DynamicPatterns(method, params, block_size)  # MethodError for a bad method or parameter
        self.model, self.method, self.params, self.block_size = model, method, copy.deepcopy(dict(params or {})), block_size
        self._plans = {}

    def _build(self, layout: TokenLayout) -> SparsityPlan:
        return SparsityPlan(self.model, layout, self.block_size, [], {"method": self.method, "params": self.params})


def _model(data: dict) -> ModelSignature:
    expected = "an object with " + ", ".join(MODEL_FIELDS)
    m = _require(data, "model", "", expected)
    if not isinstance(m, dict):
        raise PlanError("model", m, expected)
    _known_keys(m, MODEL_FIELDS, "model.")
    class_name = _require(m, "class_name", "model.", "a model class name")
    if not isinstance(class_name, str) or not class_name:
        raise PlanError("model.class_name", class_name, "a model class name")
    sizes = (_positive_int(m, k, "model.", MAX_MODEL_SIZE) for k in ("num_layers", "num_heads", "head_dim"))
    return ModelSignature(class_name, *sizes)


def _layout(data: dict) -> TokenLayout:
    expected = "an object with " + ", ".join(LAYOUT_FIELDS)
    lay = _require(data, "layout", "", expected)
    if not isinstance(lay, dict):
        raise PlanError("layout", lay, expected)
    _known_keys(lay, LAYOUT_FIELDS, "layout.")
    for key in LAYOUT_FIELDS:  # all five, though TokenLayout has defaults: a lost field is not a default
        _require(lay, key, "layout.", f"a value (a layout gives all of {', '.join(LAYOUT_FIELDS)})")
    try:
        return TokenLayout(**lay)
    except (TypeError, ValueError) as exc:
        named = re.match(r"TokenLayout\.(\w+)", str(exc))
        if named and named.group(1) in lay:
            raise PlanError(f"layout.{named.group(1)}", lay[named.group(1)], f"a valid value ({exc})") from None
        raise PlanError("layout", lay, f"a valid token layout ({exc})") from None


def _layer_entry(raw: Any, at: str, sig: ModelSignature, layout: TokenLayout, block_size: int, built: set) -> LayerEntry:
    if not isinstance(raw, dict):
        raise PlanError(at, raw, "an object with layer, heads and optional step_start, step_end")
    where = f"{at}."
    _known_keys(raw, LAYER_FIELDS, where)
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
    heads = tuple(_head(head, f"{where}heads[{h}]", layout, block_size, built, layer=layer, index=h, step=start)
                  for h, head in enumerate(heads_raw))
    return LayerEntry(layer, heads, start, end)


def _head(head: Any, at: str, layout: TokenLayout, block_size: int, built: set, *, layer: int = 0,
          index: int = 0, step: int = 0) -> HeadSpec:
    if not isinstance(head, dict):
        raise PlanError(at, head, 'an object {"pattern": ..., "params": {...}} or {"method": ..., "params": {...}}')
    _known_keys(head, HEAD_FIELDS, f"{at}.")
    if "method" in head:
        if "pattern" in head:
            raise PlanError(f"{at}.method", head["method"], f"no method beside pattern {head['pattern']!r}: a head "
                            "names a pattern or a method, not both")
        return _method_head(head, at, layout, block_size, built, layer, index, step)
    name = head.get("pattern")
    if not isinstance(name, str) or name not in pattern_registry.available():
        raise PlanError(f"{at}.pattern", name, f"one of {', '.join(pattern_registry.available())} (or, instead of "
                        f"pattern, a method: one of {', '.join(method_registry.list_methods())})")
    params = head.get("params", {})
    if not isinstance(params, dict):
        raise PlanError(f"{at}.params", params, "an object of pattern parameters")
    _json_data(params, f"{at}.params")
    key = (name, json.dumps(params, sort_keys=True))
    if key not in built:
        # Build once per distinct recipe: the builder is the one judge of its parameters.
        try:
            pattern_registry.build(name, layout, block_size=block_size, **params)
        except PatternError as exc:
            raise PlanError(f"{at}.params", params, f"valid parameters of {name!r} ({exc})") from None
        except (TypeError, ValueError, OverflowError, RuntimeError, IndexError) as exc:
            # a builder (perhaps a third party's) that failed without a PatternError: still the plan's fault
            raise PlanError(f"{at}.params", params, f"parameters {name!r} can be built with "
                            f"({type(exc).__name__}: {exc})") from exc
        built.add(key)
    return HeadSpec(name, copy.deepcopy(params))  # the caller's dict may change later; the plan must not


def _method_head(head: dict, at: str, layout: TokenLayout, block_size: int, built: set, layer: int, index: int,
                 step: int) -> HeadSpec:
    name = head["method"]
    if not isinstance(name, str) or name not in method_registry.list_methods():
        raise PlanError(f"{at}.method", name, f"one of {', '.join(method_registry.list_methods())}")
    params = head.get("params", {})
    if not isinstance(params, dict):
        raise PlanError(f"{at}.params", params, f"an object of {name!r}'s parameters")
    _json_data(params, f"{at}.params")
    cls = method_registry.get_method(name)
    if cls.is_dynamic():
        raise PlanError(f"{at}.method", name, "a static method: a dynamic one selects its masks from the model's q and "
                        "k while it runs, so it is applied with sparsevdit.apply(model, method=...), not named in a plan")
    try:
        parsed = method_registry.parse_params(cls, params)
    except method_registry.MethodError as exc:
        raise PlanError(f"{at}.params", params, f"valid parameters of method {name!r} ({exc})") from None
    except TypeError as exc:  # a value of a type the dataclass cannot take
        raise PlanError(f"{at}.params", params, f"valid parameters of method {name!r} ({exc})") from None
    where = tuple(v if n in cls.varies else None for n, v in (("layer", layer), ("head", index), ("step", step)))
    key = ("method", name, json.dumps(params, sort_keys=True), where)
    if key not in built:
        # Build once where the entry starts (past the method's own dense options): the method judges
        # whether it can make a mask for this layout and block size.
        try:
            cls.build(layout, block_size, parsed, layer=layer, head=index, step=step)
        except (method_registry.MethodError, PatternError, TypeError, ValueError, OverflowError, RuntimeError,
                IndexError) as exc:
            raise PlanError(f"{at}.params", params, f"parameters method {name!r} can build a mask of this "
                            f"layout with ({type(exc).__name__}: {exc})") from None
        built.add(key)
    return HeadSpec.of_method(name, copy.deepcopy(params))


def _overlap(a: LayerEntry, b: LayerEntry) -> bool:
    a_end = a.step_end if a.step_end is not None else float("inf")
    b_end = b.step_end if b.step_end is not None else float("inf")
    return a.step_start < b_end and b.step_start < a_end
