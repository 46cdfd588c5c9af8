"""Block-sparse attention patterns over a video token layout, in a string-keyed registry."""

from . import builtin as _builtin  # noqa: F401  (registers the built-in patterns)
from . import random_blocks as _random_blocks  # noqa: F401
from .base import BlockPattern, block_lengths, num_blocks
from .fitting import width_for_density
from .selection import BlockSelection
from .registry import ParamDoc, PatternError, available, build, check_params, parameters, register, revision, summary

__all__ = [
    "BlockPattern",
    "BlockSelection",
    "ParamDoc",
    "PatternError",
    "available",
    "block_lengths",
    "build",
    "check_params",
    "num_blocks",
    "parameters",
    "register",
    "revision",
    "summary",
    "width_for_density",
]
