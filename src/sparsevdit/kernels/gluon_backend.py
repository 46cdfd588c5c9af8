"""Gluon backend: FlashAttention-3's structure (loader warp, two consumer warpgroups sharing K/V) over our
block lists, for Hopper (kernels/gluon_kernel.py; docs/kernel.md, "The way past it").

``auto`` reaches this kernel through the ``triton`` backend, which runs a head group on it when its query
blocks keep at least ``triton_backend.gluon_min_blocks`` key blocks on average (there it beats the tl
kernel); by name (``backend="gluon"``) it runs every group, for tests and benchmarks.
"""

from __future__ import annotations

import importlib
import math

import torch

from . import triton_sparse as ts
from .registry import AttentionCall, register_backend
from .forward_checks import forward_kernel_reasons

STAGES = 2  # K/V ring depth: 2 x (K + V) of 128 x 128 bf16 + two Q tiles = 192 KB of shared memory, one CTA per SM
# (3 stages measured slower: bench/results/gluon-overlap-h200.json)


def not_hopper(device: torch.device) -> str | None:
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:
        return "the Gluon kernel needs a Hopper GPU (sm_90: wgmma and TMA)"
    return None


def gluon_missing() -> str | None:
    """Why Gluon cannot be used in this process, or None."""
    if not ts.HAS_TRITON:
        return "triton is not installed (pip install 'sparsevdit[triton]')"
    if ts.interpret_mode():
        return "Gluon kernels do not run under TRITON_INTERPRET=1 (there is no Gluon interpreter)"
    version = triton_version()
    if version < (3, 6):
        # Gluon's API moved between releases; the kernel is built and run on 3.6 (GPU) and 3.9 (compile)
        return f"the Gluon kernel needs Triton >= 3.6 (this is {'.'.join(map(str, version))})"
    try:
        importlib.import_module("triton.experimental.gluon.language.nvidia.hopper")
    except Exception as exc:  # pragma: no cover - a broken install
        return f"this Triton has no Gluon Hopper dialect ({exc!r}): Triton >= 3.6 is needed"
    return None


def triton_version() -> tuple[int, int]:
    """(major, minor) of the installed Triton."""
    import triton

    major, minor = (triton.__version__.split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def tensor_reasons(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the kernel cannot take these tensors (shapes, dtype, head_dim), or None."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        return f"q, k, v must share one shape [B, H, N, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    if q.dtype not in ts.SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype} is not float16 or bfloat16 (q, k and v alike)"
    if q.shape[-1] not in ts.SUPPORTED_HEAD_DIMS:
        return f"head_dim {q.shape[-1]} is not 64 or 128"
    return None


def check_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int) -> str | None:
    """Why the kernel cannot run these tensors here, or None."""
    if block_size != 128:
        return f"block_size {block_size} is not 128 (the kernel's tiles are 128 query rows x 128 keys)"
    return tensor_reasons(q, k, v) or not_hopper(q.device) or gluon_missing()


def gluon_block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: "ts.BlockIndex",
                                 scale: float | None = None, *, return_lse: bool = False, schedule: str = "head",
                                 stages: int = STAGES, persistent: bool = True, heads: torch.Tensor | None = None,
                                 perm: torch.Tensor | None = None, out: torch.Tensor | None = None,
                                 lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block-sparse attention over ``[B, H, N, D]`` tensors with the Gluon kernel; the arguments mean what
    they mean for ``triton_sparse.block_sparse_attention``.

    ``index`` gives each of its h heads the kept key blocks per query block; ``heads`` (int tensor [h])
    runs it on those heads of q/k/v, read in place (contiguous and [B, N, H, D]-backed views alike: see
    ``gluon_kernel.row_view``; other layouts are copied). ``perm``: the index is over a reordered sequence
    whose position j is token ``perm[j]``; TMA cannot gather rows, so the group's q/k/v are gathered in one
    pass each and its output scattered back. ``out``/``lse`` receive the result (covered heads only).
    Returns ``(out, lse or None)``: rows that keep no key get 0 and lse -inf. ``persistent=False`` launches
    one CTA per tile instead of one per SM (the first probe's form).
    """
    reason = check_call(q, k, v, index.block_size)
    if reason:
        raise ValueError(reason)
    batch, _, n, head_dim = q.shape
    q, k, v, heads, perm, out, lse = ts.group_call_arguments(q, k, v, index, heads=heads, perm=perm, out=out,
                                                             lse=lse, return_lse=return_lse)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    if perm is not None:
        qg, kg, vg = (ts.gather_heads_rows(t, heads, perm) for t in (q, k, v))
        og, lg = gluon_block_sparse_attention(qg, kg, vg, index, scale, return_lse=lse is not None,
                                              schedule=schedule, stages=stages, persistent=persistent)
        hl, pl = heads.long()[:, None], perm.long()[None, :]
        out[:, hl, pl] = og  # position j of the reordered sequence is token perm[j]
        if lse is not None:
            lse[:, hl, pl] = lg
        return out, (lse if return_lse else None)
    from . import gluon_kernel

    q, k, v = (t if gluon_kernel.row_view(t) is not None else t.contiguous() for t in (q, k, v))
    try:
        views = gluon_kernel.tma_views(q, k, v)
    except ValueError:  # k and v laid out differently: read both contiguous
        k, v = k.contiguous(), v.contiguous()
        views = gluon_kernel.tma_views(q, k, v)
    store_lse = lse is not None
    lse_arg = lse if store_lse else torch.empty(1, dtype=torch.float32, device=q.device)
    records = index.launch_records(schedule)
    tiles = records.shape[0] * batch
    if tiles:
        grid = min(tiles, torch.cuda.get_device_properties(q.device).multi_processor_count) if persistent else tiles
        gluon_kernel.launch(q, k, v, views, out, lse_arg, store_lse, index.kv_indices, records, index.num_q_blocks, scale,
                            grid, stages, heads, heads)
    return out, (lse if return_lse else None)


class GluonBackend:
    name = "gluon"
    priority = 15  # after triton; auto skips it anyway while prefer_not says so

    def cannot_run(self, call: AttentionCall) -> str | None:
        reason = forward_kernel_reasons(call, "Gluon")
        if reason:
            return reason
        if call.patterns[0].block_size != 128:
            return f"block_size {call.patterns[0].block_size} is not 128 (the kernel's tiles are 128 x 128)"
        return not_hopper(call.device) or gluon_missing()

    def prefer_not(self, call: AttentionCall) -> str | None:
        return ("auto reaches the Gluon kernel through backend 'triton', which runs it where it is faster "
                "(head groups of long lists); ask for backend='gluon' by name to run it everywhere")

    def run(self, q, k, v, call: AttentionCall, scale: float):
        index = ts.block_index_for(call.patterns, q.device)
        return gluon_block_sparse_attention(q, k, v, index, scale, return_lse=call.return_lse)

    def run_into(self, q, k, v, call: AttentionCall, scale: float, *, heads, perm, out, lse) -> None:
        """The group ``heads`` of the full [B, H, N, D] q/k/v, written into out/lse in place; ``perm``: the
        group's token reordering or None."""
        index = ts.block_index_for(call.patterns, q.device)
        gluon_block_sparse_attention(q, k, v, index, scale, return_lse=call.return_lse, heads=heads, perm=perm,
                                     out=out, lse=lse)


register_backend(GluonBackend())
