"""Methods: which block mask an attention head gets, decided per (layer, head, step).

A method is a class with a ``name``, a frozen ``Params`` dataclass (a subclass of ``MethodParams``,
validated on construction) and a static ``build(layout, block_size, params, *, layer, head, step)``
returning an ordinary ``BlockPattern`` (so every backend runs it) or None for a dense head. The
options every method takes, ``dense_steps`` and ``dense_layers``, live in ``MethodParams`` and are
applied once, by ``build_for``; a method's ``build`` never sees a step or layer they make dense.

Methods import ``patterns`` and ``layout``; neither imports methods.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ..layout import TokenLayout
from ..patterns.base import BlockPattern


class MethodError(ValueError):
    """A method name or parameter that cannot be used; the message says what would be valid."""


def check_int(method: str, key: str, value: object, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MethodError(f"method {method!r}: {key} must be an integer >= {minimum}, got {value!r}")


def check_number(method: str, key: str, value: object, *, positive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
    if not ok or (positive and value <= 0):
        raise MethodError(f"method {method!r}: {key} must be a finite number{' > 0' if positive else ''}, got {value!r}")


def check_choice(method: str, key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MethodError(f"method {method!r}: {key} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def tuple_field(params: object, key: str, expected: str) -> tuple:
    """A frozen Params' field as a tuple: a list (from JSON or a CLI) is converted and stored back;
    anything else that is not a tuple is refused, naming ``expected``."""
    value = getattr(params, key)
    if isinstance(value, list):
        value = tuple(value)
        object.__setattr__(params, key, value)
    if not isinstance(value, tuple):
        raise MethodError(f"method {getattr(params, 'method', '?')!r}: {key} must be {expected}, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class MethodParams:
    """Options of every method.

    dense_steps: the first N denoising steps (step < N) run dense.
    dense_layers: indices of layers that always run dense.
    """

    method: ClassVar[str] = "?"  # set by each subclass, for error messages

    dense_steps: int = 0
    dense_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_int(self.method, "dense_steps", self.dense_steps)
        layers = tuple_field(self, "dense_layers", "a tuple of layer indices")
        for layer in layers:
            check_int(self.method, "dense_layers entry", layer)
        object.__setattr__(self, "dense_layers", tuple(sorted(set(layers))))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (tuples as lists)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}


class Method:
    """Base of a method: subclasses set ``name``, ``Params``, ``summary`` and implement ``build``."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # named sets of defaults, for the docs and CLI
    # Which of layer, head and step ``build`` reads (beyond dense_steps / dense_layers, which build_for
    # applies): masks are cached per the ones named. All three unless a method says otherwise.
    varies: ClassVar[frozenset[str]] = frozenset({"layer", "head", "step"})

    @classmethod
    def full_params(cls, layout: TokenLayout) -> dict[str, Any]:
        """Parameters under which this method keeps every token pair of ``layout`` (a dense mask): the
        identity check of an integration (applying them must reproduce dense attention). Every method
        defines it; the contract tests run it for each registered one."""
        raise NotImplementedError(f"method {cls.__name__} defines no full_params(layout)")

    @classmethod
    def search_params(cls, layout: TokenLayout, block_size: int) -> list[dict[str, Any]]:
        """Parameter sets the budget search may choose among for a head of this layout (a spread of
        densities); none by default: a method offers itself to the search by overriding this."""
        return []

    @staticmethod
    def build(
        layout: TokenLayout, block_size: int, params: Any, *, layer: int, head: int, step: int
    ) -> BlockPattern | None:
        # never reached for a registered static method: register_method refuses a class without build or select
        raise NotImplementedError("a Method subclass must define build(layout, block_size, params, *, layer, head, step)")

    # A *dynamic* method defines instead ``select(q, k, layout, block_size, params, *, v, layer, step)``:
    # each head's kept key blocks from the layer's own post-RoPE q and k [B, H, N, D] (v for methods that
    # compare outputs), as (counts int32 [H, q_blocks], indices int32 [H, q_blocks, k_blocks], rows
    # ascending, -1 padded) on q's device, or as one BlockPattern per head (a choice among prebuilt masks).
    # ``methods.dynamic`` runs it at most once per (layer, step) and reuses it for ``reuse_every`` steps.
    select = None

    @classmethod
    def is_dynamic(cls) -> bool:
        return cls.select is not None


_REGISTRY: dict[str, type[Method]] = {}


def register_method(method: type[Method], *, override: bool = False) -> type[Method]:
    """Register ``method`` under ``method.name`` (usable as a class decorator). A name already taken
    is refused unless ``override=True``: plans name methods, and a silent swap would change them."""
    name = getattr(method, "name", None)
    if not isinstance(name, str) or not name:
        raise MethodError(f"a method needs a non-empty string name, got {name!r}")
    params = getattr(method, "Params", None)
    if not (isinstance(params, type) and issubclass(params, MethodParams) and dataclasses.is_dataclass(params)):
        raise MethodError(f"method {name!r}: Params must be a dataclass subclassing MethodParams")
    if getattr(method, "full_params", None) is None or method.full_params.__func__ is Method.full_params.__func__:
        raise MethodError(f"method {name!r} has no full_params(layout) of its own: the parameters that keep every "
                          "pair (its identity check)")
    build = getattr(method, "build", None)
    static = callable(build) and build is not Method.build
    dynamic = callable(getattr(method, "select", None))
    if static and dynamic:
        raise MethodError(f"method {name!r} defines both build and select: a method is static or dynamic")
    if not static and not dynamic:
        raise MethodError(f"method {name!r} has no build of its own: define build(layout, block_size, params, *, "
                          "layer, head, step) returning a BlockPattern or None (static), or select(q, k, layout, "
                          "block_size, params) (dynamic)")
    varies = getattr(method, "varies", None)
    if not isinstance(varies, frozenset) or not varies <= {"layer", "head", "step"}:
        raise MethodError(f"method {name!r}: varies must be a frozenset of 'layer', 'head', 'step' (what build reads), "
                          f"got {varies!r}")
    if name in _REGISTRY and _REGISTRY[name] is not method and not override:
        raise MethodError(f"method {name!r} is already registered; pass override=True to replace it")
    _REGISTRY[name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove ``name`` (for tests that register a method of their own)."""
    _REGISTRY.pop(name, None)


def list_methods(kind: str | None = None) -> list[str]:
    """Registered method names; ``kind`` "static" or "dynamic" keeps those only."""
    if kind not in (None, "static", "dynamic"):
        raise MethodError(f"kind must be None, 'static' or 'dynamic', got {kind!r}")
    return sorted(n for n, m in _REGISTRY.items() if kind is None or m.is_dynamic() == (kind == "dynamic"))


def get_method(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(list_methods()) or 'none'}")
    return _REGISTRY[name]


def _resolve(method: str | type[Method]) -> type[Method]:
    return get_method(method) if isinstance(method, str) else method


def param_names(method: str | type[Method]) -> list[str]:
    return [f.name for f in dataclasses.fields(_resolve(method).Params)]


@dataclass(frozen=True)
class ParamInfo:
    name: str
    default: Any  # the value a Params built from {} holds (presets resolved)
    help: str


def _field_helps(params_cls: type) -> dict[str, str]:
    """``name: help`` lines of the docstrings of ``params_cls`` and its bases (a continuation line is
    indented further)."""
    helps: dict[str, str] = {}
    for cls in reversed(params_cls.__mro__):
        current = None
        for line in inspect.getdoc(cls).splitlines() if cls.__doc__ else []:
            key, sep, text = line.partition(":")
            if sep and key.isidentifier() and not line.startswith(" "):
                current = key
                helps[key] = text.strip()
            elif current and line.startswith(" "):
                helps[current] += " " + line.strip()
            else:
                current = None
    return helps


def param_info(method: str | type[Method]) -> list[ParamInfo]:
    """Each parameter of ``method`` with its default and the help its Params docstring gives."""
    cls = _resolve(method)
    defaults = cls.Params().to_dict()
    helps = _field_helps(cls.Params)
    return [ParamInfo(name, defaults[name], helps.get(name, "")) for name in param_names(cls)]


def parse_params(method: str | type[Method], values: Mapping[str, Any] | MethodParams | None = None) -> MethodParams:
    """``method``'s Params from a dict (a plan entry, CLI ``-p key=value``); unknown keys raise
    MethodError naming the allowed ones. A Params instance of the method passes through."""
    cls = _resolve(method)
    if isinstance(values, cls.Params):
        return values
    if isinstance(values, MethodParams):
        raise MethodError(f"method {cls.name!r} takes {cls.Params.__name__}, got {type(values).__name__}")
    values = dict(values or {})
    allowed = param_names(cls)
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise MethodError(
            f"method {cls.name!r} has no parameter {', '.join(unknown)}; its parameters: {', '.join(allowed)}"
        )
    return cls.Params(**values)


def build_for(
    method: str | type[Method],
    layout: TokenLayout,
    block_size: int,
    params: Mapping[str, Any] | MethodParams | None = None,
    *,
    layer: int,
    head: int,
    step: int,
) -> BlockPattern | None:
    """The pattern ``method`` gives one head, or None where that head runs dense: a step below
    ``dense_steps``, a layer in ``dense_layers``, or the method's own choice."""
    cls = _resolve(method)
    if cls.is_dynamic():
        raise MethodError(f"method {cls.name!r} is dynamic: its masks come from the model's own q and k while it runs "
                          "(sparsevdit.apply(model, method=...)), not from the layout alone")
    p = parse_params(cls, params)
    if not isinstance(layout, TokenLayout):
        raise MethodError(f"method {cls.name!r}: layout must be a sparsevdit.TokenLayout, got {type(layout).__name__}")
    check_int(cls.name, "block_size", block_size, 1)
    for key, value in (("layer", layer), ("head", head), ("step", step)):
        check_int(cls.name, key, value)
    if step < p.dense_steps or layer in p.dense_layers:
        return None
    return cls.build(layout, block_size, p, layer=layer, head=head, step=step)
