"""sparsevdit: block-sparse attention for video diffusion transformers."""

from . import patterns
from .kernels import BackendError, available_backends, sparse_attention
from .layout import TokenLayout
from .plan import ModelSignature, PlanError, SparsityPlan

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "ModelSignature",
    "PlanError",
    "SparsityPlan",
    "TokenLayout",
    "available_backends",
    "patterns",
    "sparse_attention",
]
