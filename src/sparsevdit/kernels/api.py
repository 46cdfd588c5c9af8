"""``sparse_attention``: one entry point over every backend, with head fusion and token reordering."""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from functools import lru_cache
from typing import Sequence

import torch

from ..caches import clear_with_the_others
from ..layout import TokenLayout
from ..patterns import BlockPattern, BlockSelection
from .registry import AttentionCall, select_backend, selection_backend


def _check_tensors(q, k, v, layout) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor [B, H, N, D], got {shape}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k and v must have one shape [B, H, N, D]; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError("q, k and v must share dtype and device")
    if not q.dtype.is_floating_point:
        raise ValueError(f"q, k and v must be floating-point tensors, got {q.dtype}")
    if q.numel() == 0:
        raise ValueError(f"q, k and v must not be empty, got shape {tuple(q.shape)}")
    if not isinstance(layout, TokenLayout):
        raise ValueError(f"layout must be a sparsevdit.TokenLayout, got {type(layout).__name__}")
    n = q.shape[2]
    if n != layout.num_tokens:
        raise ValueError(
            f"q has {n} tokens (dim 2) but the layout {layout} has {layout.num_tokens}: "
            "pass the layout of this sequence (text tokens included)"
        )


def _check_inputs(q, k, v, patterns, layout) -> list[BlockPattern]:
    _check_tensors(q, k, v, layout)
    heads = q.shape[1]
    if isinstance(patterns, BlockPattern):
        patterns = [patterns] * heads
    patterns = list(patterns)
    if len(patterns) != heads:
        raise ValueError(f"got {len(patterns)} patterns for {heads} heads: give one pattern, or one per head")
    for h, p in enumerate(patterns):
        if not isinstance(p, BlockPattern):
            raise ValueError(f"patterns[{h}] is a {type(p).__name__}, not a BlockPattern (use sparsevdit.patterns.build)")
        if p.layout != layout:
            raise ValueError(f"patterns[{h}] was built for layout {p.layout}, but the input's layout is {layout}")
    return patterns


def _check_selection(q, k, v, selection: BlockSelection, layout) -> None:
    _check_tensors(q, k, v, layout)
    if selection.layout != layout:
        raise ValueError(f"the selection was made for layout {selection.layout}, but the input's layout is {layout}")
    if selection.heads != q.shape[1]:
        raise ValueError(f"the selection has {selection.heads} heads but q has {q.shape[1]}")
    if selection.device != q.device:
        raise ValueError(f"the selection is on {selection.device} but q is on {q.device}")


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    patterns: BlockPattern | Sequence[BlockPattern] | BlockSelection,
    *,
    layout: TokenLayout,
    backend: str = "auto",
    scale: float | None = None,
    return_lse: bool = False,
    damping=None,
):
    """Block-sparse attention over ``[B, H, N, D]`` tensors in the model's (frame-major) token order.

    ``damping``: a ``kernels.damping.LogitDamping`` (UltraViCo) applied on top of the patterns, by the
    backends that can (reference, blockwise, triton on frame-major heads); None: off.

    ``patterns`` is one BlockPattern for every head, a list of H, or a ``BlockSelection`` (a dynamic
    method's device index, H heads): the Triton kernel runs that as it comes, other backends its
    BlockPatterns (one host copy). Heads whose patterns share a token
    ordering and block size run in one backend call (head fusion); empty (``skip``) heads write zeros
    and, with ``return_lse``, a log-sum-exp of -inf. Returns ``out`` or ``(out, lse)`` with lse float32
    ``[B, H, N]`` (natural log).
    """
    selection = patterns if isinstance(patterns, BlockSelection) else None
    if selection is not None:
        _check_selection(q, k, v, selection, layout)
    else:
        patterns = _check_inputs(q, k, v, patterns, layout)
    if damping is not None:
        from .damping import LogitDamping

        if not isinstance(damping, LogitDamping):
            raise ValueError(f"damping must be a sparsevdit.kernels.damping.LogitDamping or None, got {type(damping).__name__}")
    batch, heads, n, head_dim = q.shape
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    else:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0 (or None for 1/sqrt(head_dim)), got {scale!r}")
        scale = float(scale)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))

    if selection is not None:
        call = AttentionCall(device=q.device, dtype=q.dtype, batch=batch, heads=heads, num_tokens=n, head_dim=head_dim,
                             patterns=(), return_lse=return_lse, requires_grad=grad, damping=damping)
        impl = selection_backend(backend, call, selection)
        if impl is not None:
            o, lse = impl.run_selection(q, k, v, selection, call, scale)
            return (o, lse) if return_lse else o
        patterns = _check_inputs(q, k, v, selection.to_patterns(), layout)

    # With backend "auto", a layer's dense heads form a group of their own, so they run on the fastest
    # dense kernel: cuDNN (the sdpa backend), or on Hopper at 64+ key blocks our Gluon kernel (1.08-1.11x
    # cuDNN), not the sparse heads' kernel chosen for their short lists. Not when the lse is asked for:
    # the sdpa backend gives none, and the split would only cost a second launch.
    split_dense = backend == "auto" and not return_lse and damping is None
    groups: dict[tuple, list[int]] = defaultdict(list)
    for h, p in enumerate(patterns):
        if not p.is_empty:
            groups[(p.ordering, p.block_size, split_dense and p.is_dense)].append(h)

    covered = sum(len(hs) for hs in groups.values()) == heads
    calls = {}
    for key, hs in groups.items():
        call = AttentionCall(
            device=q.device, dtype=q.dtype, batch=batch, heads=len(hs), num_tokens=n, head_dim=head_dim,
            patterns=tuple(patterns[h] for h in hs), return_lse=return_lse, requires_grad=grad, damping=damping,
        )
        calls[key] = (call, select_backend(backend, call))
    in_place = all(hasattr(impl, "run_into") for _, impl in calls.values())

    if in_place:
        # The backend reads the group's heads (and reordered tokens) from q/k/v as they are and writes
        # into out: no gather, scatter or layout copy here. ``empty_like`` keeps q's strides, so a
        # [B, N, H, D]-backed q gives an out whose transpose back is free.
        out = torch.empty_like(q) if covered else torch.zeros_like(q)
        lse = torch.full((batch, heads, n), float("-inf"), dtype=torch.float32, device=q.device) if return_lse else None
        for key, hs in groups.items():
            call, impl = calls[key]
            hidx, perm = _group_index(tuple(hs), layout, key[0], q.device, torch.int32)
            impl.run_into(q, k, v, call, scale, heads=hidx, perm=perm, out=out, lse=lse)
        return (out, lse) if return_lse else out

    if len(groups) == 1 and len(next(iter(groups.values()))) == heads and next(iter(groups))[0] == "frame_major":
        # One fused group of every head in the model's own order: no gather, scatter or permutation.
        call, impl = next(iter(calls.values()))
        o, lse = impl.run(q.contiguous(), k.contiguous(), v.contiguous(), call, scale)
        return (o, lse.float()) if return_lse else o

    # Every group is gathered (heads, and tokens for a reordering) in one indexing pass that also makes
    # it contiguous, and its output is scattered straight back: at 30K+ tokens each extra pass over
    # q/k/v costs about as much as a 10%-dense kernel call.
    out = torch.empty_like(q, memory_format=torch.contiguous_format) if covered else torch.zeros_like(q, memory_format=torch.contiguous_format)
    lse = torch.full((batch, heads, n), float("-inf"), dtype=torch.float32, device=q.device) if return_lse else None

    for key, hs in groups.items():
        call, impl = calls[key]
        hidx, perm = _group_index(tuple(hs), layout, key[0], q.device)
        if perm is None:
            qg, kg, vg = (t.index_select(1, hidx) for t in (q, k, v))
        else:
            qg, kg, vg = (t[:, hidx[:, None], perm[None, :]] for t in (q, k, v))
        og, lg = impl.run(qg, kg, vg, call, scale)
        if perm is None:
            out.index_copy_(1, hidx, og.to(q.dtype))
            if return_lse:
                lse.index_copy_(1, hidx, lg.float())
        else:  # position j of the reordered sequence is token perm[j]
            out[:, hidx[:, None], perm[None, :]] = og.to(q.dtype)
            if return_lse:
                lse[:, hidx[:, None], perm[None, :]] = lg.float()
    return (out, lse) if return_lse else out


@clear_with_the_others
@lru_cache(maxsize=128)
def _group_index(heads: tuple[int, ...], layout: TokenLayout, ordering: str, device: torch.device,
                 dtype: torch.dtype = torch.long):
    """Device tensors of a head group's indices and its token permutation (None for frame-major), cached."""
    hidx = torch.tensor(heads, dtype=dtype, device=device)
    perm = None if ordering == "frame_major" else layout.permutation(ordering).to(device=device, dtype=dtype)
    return hidx, perm
