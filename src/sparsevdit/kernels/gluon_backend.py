"""Gluon backend: FlashAttention-3's structure (loader warp, two consumer warpgroups sharing K/V) over our
block lists, for Hopper (kernels/gluon_kernel.py; docs/kernel.md, "The way past it").

Experimental: its probe form ran exact and at 0.95-0.96 of cuDNN dense on the H200 (against 0.92-0.93 for
the ``triton`` backend), but this persistent library form has been compiled for sm_90 only, not yet run
on a GPU. So ``auto`` does not pick it (``unsuited``) until its GPU tests and the kernel table have run;
ask for it by name: ``sparse_attention(..., backend="gluon")``.
"""

from __future__ import annotations

import importlib
import math

import torch

from . import triton_sparse as ts
from .registry import AttentionCall, register_backend
from .triton_backend import forward_kernel_reasons

STAGES = 2  # K/V ring depth: 2 x (K + V) of 128 x 128 bf16 + Q = 160 KB of shared memory, one CTA per SM


def gluon_missing() -> str | None:
    """Why Gluon cannot be used in this process, or None."""
    if not ts.HAS_TRITON:
        return "triton is not installed (pip install 'sparsevdit[triton]')"
    if ts.interpret_mode():
        return "Gluon kernels do not run under TRITON_INTERPRET=1 (there is no Gluon interpreter)"
    try:
        importlib.import_module("triton.experimental.gluon.language.nvidia.hopper")
    except Exception as exc:  # pragma: no cover - an older Triton
        return f"this Triton has no Gluon Hopper dialect ({exc!r}): Triton >= 3.6 is needed"
    return None


def check_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int) -> str | None:
    """Why the kernel cannot run these tensors, or None."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        return f"q, k, v must share one shape [B, H, N, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    if q.dtype not in ts.SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype} is not float16 or bfloat16 (q, k and v alike)"
    if q.shape[-1] not in ts.SUPPORTED_HEAD_DIMS:
        return f"head_dim {q.shape[-1]} is not 64 or 128"
    if block_size != 128:
        return f"block_size {block_size} is not 128 (the kernel's tiles are 128 query rows x 128 keys)"
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device)[0] != 9:
        return "the Gluon kernel needs a Hopper GPU (sm_90: wgmma and TMA)"
    return gluon_missing()


def gluon_block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: "ts.BlockIndex",
                                 scale: float | None = None, *, return_lse: bool = False, schedule: str = "head",
                                 stages: int = STAGES, persistent: bool = True
                                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block-sparse attention over contiguous ``[B, H, N, D]`` tensors with the Gluon kernel.

    ``index`` (``triton_sparse.block_index_for``) gives each head its kept key blocks per query block.
    Returns ``(out, lse or None)`` like ``triton_sparse.block_sparse_attention``: rows that keep no key
    get 0 and lse -inf. Non-contiguous inputs are copied (the kernel reads [B*H*N, D] rows through TMA).
    ``persistent=False`` launches one CTA per tile instead of one per SM (the first probe's form: each
    query block fills and drains the K/V ring on its own).
    """
    reason = check_call(q, k, v, index.block_size)
    if reason:
        raise ValueError(reason)
    batch, heads, n, head_dim = q.shape
    if heads != index.heads:
        raise ValueError(f"q has {heads} heads but the index has {index.heads}")
    if n != index.num_tokens:
        raise ValueError(f"q has {n} tokens but the index was built for {index.num_tokens}")
    q, k, v = (t.contiguous() for t in (q, k, v))
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    out = torch.empty_like(q)
    lse = (torch.empty((batch, heads, n), dtype=torch.float32, device=q.device) if return_lse
           else torch.empty(1, dtype=torch.float32, device=q.device))
    records = index.launch_records(schedule)
    tiles = records.shape[0] * batch
    if tiles:
        from . import gluon_kernel

        grid = min(tiles, torch.cuda.get_device_properties(q.device).multi_processor_count) if persistent else tiles
        gluon_kernel.launch(q, k, v, out, lse, return_lse, index.kv_indices, records, index.num_q_blocks, scale,
                            grid, stages)
    return out, (lse if return_lse else None)


class GluonBackend:
    name = "gluon"
    priority = 15  # after triton; auto skips it anyway while unsuited says so

    def unsupported(self, call: AttentionCall) -> str | None:
        reason = forward_kernel_reasons(call, "Gluon")
        if reason:
            return reason
        if call.patterns[0].block_size != 128:
            return f"block_size {call.patterns[0].block_size} is not 128 (the kernel's tiles are 128 x 128)"
        if call.device.type != "cuda" or torch.cuda.get_device_capability(call.device)[0] != 9:
            return "the Gluon kernel needs a Hopper GPU (sm_90: wgmma and TMA)"
        return gluon_missing()

    def unsuited(self, call: AttentionCall) -> str | None:
        return ("experimental: compiled for sm_90 but not yet run on a GPU in this form (docs/kernel.md); "
                "ask for backend='gluon' by name")

    def run(self, q, k, v, call: AttentionCall, scale: float):
        index = ts.block_index_for(call.patterns, q.device)
        return gluon_block_sparse_attention(q, k, v, index, scale, return_lse=call.return_lse)


register_backend(GluonBackend())
