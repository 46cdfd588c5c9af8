"""Methods: which block mask each attention head gets, per (layer, head, step); see methods.base."""

from .base import (
    Method,
    MethodError,
    MethodParams,
    build_for,
    get_method,
    list_methods,
    ParamInfo,
    param_info,
    param_names,
    parse_params,
    register_method,
    unregister_method,
)
from . import radial as _radial  # noqa: F401,E402  (registers "radial")
from . import sliding_tile as _sliding_tile  # noqa: F401,E402  (registers "sliding_tile")
from . import svg as _svg  # noqa: F401,E402  (registers "svg", dynamic)
from . import topk as _topk  # noqa: F401,E402  (registers "topk", dynamic)
from .ultravico import UltraViCo  # noqa: E402  (a logit transform on top of any method, not a mask)

__all__ = [
    "Method",
    "MethodError",
    "MethodParams",
    "build_for",
    "get_method",
    "list_methods",
    "ParamInfo",
    "param_info",
    "param_names",
    "parse_params",
    "register_method",
    "unregister_method",
    "UltraViCo",
]
