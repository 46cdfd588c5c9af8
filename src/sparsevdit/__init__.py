"""sparsevdit: block-sparse attention for video diffusion transformers."""

from . import methods, patterns
from .caches import clear_caches
from .kernels import BackendError, available_backends, sparse_attention
from .integrations import apply, remove
from .layout import TokenLayout
from .plan import ModelSignature, PlanError, SparsityPlan

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "ModelSignature",
    "PlanError",
    "SparsityPlan",
    "TokenLayout",
    "apply",
    "remove",
    "available_backends",
    "clear_caches",
    "methods",
    "patterns",
    "sparse_attention",
]
