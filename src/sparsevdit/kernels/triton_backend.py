"""Triton backend: our block-sparse flash-attention forwards.

Two kernels over the same block lists: the ``tl`` kernel (kernels/triton_sparse.py: CUDA, with TMA and
warp specialisation on sm_90+, a pointer-load path on older GPUs, and on the CPU under
``TRITON_INTERPRET=1`` for tests) and, on Hopper, the Gluon kernel (kernels/gluon_kernel.py,
FlashAttention-3's structure). Each call (a head group) runs the Gluon kernel when its query blocks
keep at least ``gluon_min_blocks`` key blocks on average and the Gluon kernel can take it, else the tl
kernel (docs/kernel.md, "Which kernel runs"). Per-call index tensors are built once per (pattern keys, device)
and cached.
"""

from __future__ import annotations

from . import triton_sparse as ts
from .forward_checks import forward_kernel_reasons
from .registry import AttentionCall, register_backend

# Head groups whose query blocks keep at least this many key blocks on average run the Gluon kernel on
# Hopper. Per kept block it runs at 0.98-1.09 of cuDNN dense where the tl kernel reaches 0.89-0.96, but
# each query tile fills and drains its pipeline, which short lists do not repay: at 13 blocks per list it
# was 0.73-0.82 against the tl kernel's 0.86-0.88, at 26 a tie or a loss, at 64 a tie, at 93 and more a
# win of 3-17% (bench/results/kernel-crossover-h200.json). A bench knob: bench/kernels.py's triton@tl
# times the tl kernel alone.
gluon_min_blocks = 64.0
# Head dims the Gluon path is taken at: its speed is measured at 128 only (64 runs exact, by name, but
# untimed: CogVideoX's heads stay on the tl kernel, which ran 64 at >= 0.96 of cuDNN on the H100).
gluon_head_dims = (128,)


class TritonBackend:
    name = "triton"
    priority = 20  # tried before flex by auto
    supports_damping = True  # the tl kernel's distance transform, on frame-major head groups

    def cannot_run(self, call: AttentionCall) -> str | None:
        return self._cannot_run(call, call.patterns[0].block_size, call.patterns[0].ordering)

    def cannot_run_selection(self, call: AttentionCall, selection) -> str | None:
        """Why a dynamic selection (``patterns.BlockSelection``, device tensors) cannot run as it comes."""
        return self._cannot_run(call, selection.block_size, selection.ordering)

    def _cannot_run(self, call: AttentionCall, bs: int, ordering: str) -> str | None:
        if not ts.HAS_TRITON:
            return "triton is not installed (pip install 'sparsevdit[triton]')"
        if call.device.type != "cuda" and not (call.device.type == "cpu" and ts.interpret_mode()):
            return (f"the Triton kernel runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1), "
                    f"not {call.device.type}")
        reason = forward_kernel_reasons(call, "Triton")
        if reason:
            return reason
        if call.damping is not None and ordering != "frame_major":
            return (f"logit damping on a {ordering} head group: the kernel measures token "
                    "distance in the group's own order, which is the model's only for frame-major groups")
        if bs not in ts.SUPPORTED_BLOCK_SIZES:
            return (f"block_size {bs} is not 64 or 128: the query tile must equal the block (or half of it) "
                    "and 64-128 row tiles are what Hopper's tensor cores and shared memory suit")
        return ts.triton_missing()

    def prefer_not(self, call: AttentionCall) -> str | None:
        if call.device.type != "cuda":
            return "the CPU interpreter runs the kernel in Python: for tests only, far slower than reference"
        if not ts.hopper_features(call.device):
            return "this GPU lacks TMA / warp specialisation (pre-Hopper): the kernel runs its untuned fallback path"
        return None

    def run(self, q, k, v, call: AttentionCall, scale: float):
        index = ts.block_index_for(call.patterns, q.device)
        if call.damping is not None:
            return ts.block_sparse_attention(q, k, v, index, scale, return_lse=call.return_lse, **_damping_args(call))
        return kernel_for(q, k, v, index)(q, k, v, index, scale, return_lse=call.return_lse)

    def run_into(self, q, k, v, call: AttentionCall, scale: float, *, heads, perm, out, lse) -> None:
        """The group ``heads`` of the full [B, H, N, D] q/k/v (any strides), written into out/lse in place;
        ``perm``: the group's token reordering (position j is token perm[j]) or None."""
        index = ts.block_index_for(call.patterns, q.device)
        if call.damping is not None:  # the tl kernel: the Gluon kernel has no distance transform
            ts.block_sparse_attention(q, k, v, index, scale, return_lse=call.return_lse, heads=heads, perm=perm,
                                      out=out, lse=lse, **_damping_args(call))
            return
        kernel_for(q, k, v, index)(q, k, v, index, scale, return_lse=call.return_lse, heads=heads, perm=perm,
                                   out=out, lse=lse)


    def run_selection(self, q, k, v, selection, call: AttentionCall, scale: float):
        """Every head of q/k/v under a dynamic selection's device index as it comes: no host copy, no
        regrouping (the tl kernel, one key range, launch records built on the device)."""
        index = ts.index_on_device(selection.indices, selection.counts, selection.block_size,
                                   selection.layout.num_tokens)
        extra = _damping_args(call, selection.layout) if call.damping is not None else {}
        return ts.block_sparse_attention(q, k, v, index, scale, return_lse=call.return_lse, **extra)


def _damping_args(call: AttentionCall, layout=None) -> dict:
    d = call.damping
    layout = call.patterns[0].layout if layout is None else layout
    return {"distance_window": d.window, "alpha": d.alpha, "damp_range": d.token_range(layout)}


def _gluon_suits(device, head_dim: int, block_size: int, mean_list_length: float) -> bool:
    """The one rule both questions below answer with: Hopper, Gluon usable, head_dim and block timed, lists
    long enough."""
    if (device.type != "cuda" or head_dim not in gluon_head_dims or block_size != 128
            or mean_list_length < gluon_min_blocks):
        return False
    from . import gluon_backend as gb

    return gb.not_hopper(device) is None and gb.gluon_missing() is None


def runs_on_gluon(call: AttentionCall) -> bool:
    """Whether this backend would run ``call`` on the Gluon kernel, from the call's description alone (the
    sdpa backend asks, to leave long dense heads to it)."""
    if forward_kernel_reasons(call, "Gluon"):
        return False
    mean = sum(float(p.kv_counts.float().mean()) for p in call.patterns) / len(call.patterns)
    return _gluon_suits(call.device, call.head_dim, call.patterns[0].block_size, mean)


def kernel_for(q, k, v, index: ts.BlockIndex):
    """The forward that runs this call: the Gluon kernel for a group of long enough lists that it can take,
    else the tl kernel (both take the same arguments)."""
    if index.on_device_only:  # the Gluon path reads list lengths on the host
        return ts.block_sparse_attention
    if _gluon_suits(q.device, q.shape[-1], index.block_size, index.mean_list_length):
        from . import gluon_backend as gb

        if gb.tensor_reasons(q, k, v) is None:
            return gb.gluon_block_sparse_attention
    return ts.block_sparse_attention


register_backend(TritonBackend())
