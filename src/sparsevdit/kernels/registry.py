"""Attention backends behind ``sparse_attention``: each says why it cannot run an input.

Modelled on xformers' dispatch: ``auto`` takes the first backend, in priority order, that can run
the input and suits it; when none does, the error lists every backend with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..patterns import BlockPattern
from .damping import LogitDamping  # noqa: F401  (the AttentionCall field's type)


# Temporary memory ``auto`` may give one call on a CPU (beyond q, k, v and the output): backends whose
# working set is larger (the N x N paths) are passed over for the blockwise backend, which chunks.
CPU_MEMORY_BUDGET = 1 << 30


@dataclass(frozen=True)
class AttentionCall:
    """What a backend needs to know to decide whether it can run a group of heads."""

    device: torch.device
    dtype: torch.dtype
    batch: int
    heads: int
    num_tokens: int
    head_dim: int
    patterns: tuple[BlockPattern, ...]  # one per head of the group, all in one ordering and block size
    return_lse: bool
    requires_grad: bool = False  # autograd will differentiate through this call
    damping: "LogitDamping | None" = None  # distance-keyed logit damping (UltraViCo); backends say supports_damping


class Backend(Protocol):
    name: str
    priority: int  # higher is tried first by auto

    def cannot_run(self, call: AttentionCall) -> str | None:
        """Why this backend cannot run ``call`` at all, or None."""

    def prefer_not(self, call: AttentionCall) -> str | None:
        """Why ``auto`` should not pick this backend although it can run ``call`` (e.g. slower), or None."""

    def run(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention over [B, h, N, D] already in the patterns' ordering; returns (out, lse or None).

        A backend may also define ``run_into(q, k, v, call, scale, *, heads, perm, out, lse)``: the
        call's heads ``heads`` of the full [B, H, N, D] q/k/v (any strides, model token order), with
        token reordering ``perm`` (or None), written into ``out``/``lse`` in place. ``sparse_attention``
        then skips its own gather and scatter passes.
        """


class BackendError(RuntimeError):
    """No backend (or not the one asked for) can run an input; the message says why."""


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend, *, override: bool = False) -> Backend:
    """Add ``backend`` under ``backend.name``; a name already taken needs ``override=True``."""
    missing = [a for a in ("name", "priority", "cannot_run", "prefer_not", "run") if not hasattr(backend, a)]
    if missing:
        raise TypeError(f"{type(backend).__name__} is not an attention backend: it lacks {', '.join(missing)} "
                        "(see sparsevdit.kernels.registry.Backend)")
    if not isinstance(backend.name, str) or not backend.name or backend.name == "auto":
        raise ValueError(f"a backend name must be a non-empty string other than 'auto', got {backend.name!r}")
    if backend.name in _BACKENDS and not override:
        raise ValueError(f"backend {backend.name!r} is already registered; pass override=True to replace it")
    _BACKENDS[backend.name] = backend
    return backend


def available_backends() -> list[str]:
    return [b.name for b in sorted(_BACKENDS.values(), key=lambda b: -b.priority)]


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise BackendError(f"unknown backend {name!r}; available: auto, {', '.join(available_backends())}")
    return _BACKENDS[name]


def _cannot_run(backend: Backend, call: AttentionCall) -> str | None:
    if call.damping is not None and not getattr(backend, "supports_damping", False):
        return "does not apply logit damping (UltraViCo): reference, blockwise and triton do"
    return backend.cannot_run(call)


def select_backend(name: str, call: AttentionCall) -> Backend:
    if name != "auto":
        backend = get_backend(name)
        reason = _cannot_run(backend, call)
        if reason:
            raise BackendError(f"backend {name!r} cannot run this input: {reason}")
        return backend
    reasons = []
    for bname in available_backends():
        backend = _BACKENDS[bname]
        reason = _cannot_run(backend, call) or backend.prefer_not(call)
        if reason is None:
            return backend
        reasons.append(f"  {bname}: {reason}")
    raise BackendError("no attention backend can run this input:\n" + "\n".join(reasons))


def selection_backend(name: str, call: AttentionCall, selection) -> Backend | None:
    """The backend that runs a dynamic selection (``patterns.BlockSelection``) as it comes, on the device
    (one with ``run_selection``); None: run its BlockPatterns instead (a host copy). ``call`` describes
    every head, with no patterns. A named backend without that path takes the patterns; one that has it
    but cannot run this input says why."""
    names = available_backends() if name == "auto" else [get_backend(name).name]
    if selection.ordering != "frame_major":  # the device path reads q, k, v in the model's order
        return None
    for bname in names:
        backend = _BACKENDS[bname]
        if not hasattr(backend, "run_selection"):
            continue
        if call.damping is not None and not getattr(backend, "supports_damping", False):
            continue
        reason = backend.cannot_run_selection(call, selection)
        if reason is None and (name != "auto" or backend.prefer_not(call) is None):
            return backend
        if reason is not None and name != "auto":
            raise BackendError(f"backend {name!r} cannot run this input: {reason}")
    return None
