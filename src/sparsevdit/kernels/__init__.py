"""Attention backends: reference (oracle), flex (FlexAttention), triton (ours) and gluon (ours, experimental),
behind one call."""

from . import blockwise as _blockwise  # noqa: F401  (registers the backend)
from . import flex as _flex  # noqa: F401
from . import gluon_backend as _gluon  # noqa: F401
from . import reference as _reference  # noqa: F401
from . import masked_sdpa as _masked_sdpa  # noqa: F401
from . import sdpa as _sdpa  # noqa: F401
from . import triton_backend as _triton  # noqa: F401
from .api import sparse_attention
from .registry import AttentionCall, BackendError, available_backends, get_backend, register_backend

__all__ = ["AttentionCall", "BackendError", "available_backends", "get_backend", "register_backend", "sparse_attention"]
