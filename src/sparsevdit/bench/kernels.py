"""Kernel benchmark: dense cuDNN SDPA against our sparse backends at several densities (GPU).

Every sparse row is timed in the same run as the cuDNN dense baseline of its shape, so
``efficiency = cudnn_dense_ms * density / ms`` (1.0 = as fast per kept block as dense cuDNN) is a
ratio measured side by side. Times are kernel times on inputs already in the pattern's token
ordering (the permutation of multi_diagonal is a separate, shared cost).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
from dataclasses import dataclass

import torch

from .. import patterns as P
from ..kernels.registry import AttentionCall, BackendError, get_backend
from ..layout import TokenLayout
from .common import environment, gpu_name, gpu_slug, median_ms, write_json


@dataclass(frozen=True)
class Shape:
    name: str
    heads: int
    head_dim: int
    layout: TokenLayout


SHAPES = {
    "wan1.3b": Shape("wan1.3b", 12, 128, TokenLayout(21, 30, 52)),
    "wan14b": Shape("wan14b", 40, 128, TokenLayout(21, 45, 80)),
    "hunyuan": Shape("hunyuan", 24, 128, TokenLayout(33, 45, 80, text_tokens=256, text_position="suffix")),
}
KINDS = ("random", "diagonal", "multi_diagonal", "diag+stripes", "topk")


def shape_tensors(shape: Shape, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random q, k, v [1, H, N, D] of a benchmark shape on the GPU (every timing script uses the same)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    n, h, d = shape.layout.num_tokens, shape.heads, shape.head_dim
    return tuple(torch.randn(1, h, n, d, device="cuda", dtype=dtype, generator=gen) for _ in range(3))


def cudnn_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense SDPA through cuDNN: the baseline every efficiency figure divides by."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _with_width(build, layout: TokenLayout, target: float) -> P.BlockPattern:
    """The band pattern whose density is closest to ``target`` (``build(width)``; width by bisection)."""
    return build(P.width_for_density(lambda w: build(w).density, target, 2 * layout.num_tokens))


@functools.lru_cache(maxsize=8)
def topk_selection_at(shape: Shape, density: float, block_size: int = 128, seed: int = 1,
                      device: str = "cuda") -> P.BlockSelection:
    """What ``topk`` (cumulative mass ``tau``) selects at about ``density`` on q/k with block structure
    (random per-block offsets, so pooled scores are uneven, and query blocks of random sharpness): per-row
    lists of different lengths, as on a real model, unlike the even rows of a fraction or the bands.
    ``tau`` by bisection."""
    from ..methods import parse_params
    from ..methods.topk import select

    lay, h, d = shape.layout, shape.heads, shape.head_dim
    n, nb = lay.num_tokens, P.num_blocks(shape.layout.num_tokens, block_size)
    gen = torch.Generator(device=device).manual_seed(seed)
    block_of = torch.arange(n, device=device) // block_size
    q, k = (torch.randn(1, h, n, d, device=device, generator=gen)
            + 0.6 * torch.randn(1, h, nb, d, device=device, generator=gen)[:, :, block_of] for _ in range(2))
    # query blocks from sharp to diffuse (log-normal temperature): some keep a few key blocks, some many
    sharpness = torch.exp(torch.randn(1, h, nb, 1, device=device, generator=gen))
    q = q * sharpness[:, :, block_of]

    def at(tau: float) -> P.BlockSelection:
        counts, indices = select(q, k, lay, block_size, parse_params("topk", {"tau": tau}))
        return P.BlockSelection(lay, block_size, counts, indices, name="topk", params={"tau": tau})

    lo, hi = 1e-4, 1.0
    best = at(hi)
    for _ in range(18):
        mid = (lo + hi) / 2
        sel = at(mid)
        if abs(sel.density - density) < abs(best.density - density):
            best = sel
        lo, hi = (mid, hi) if sel.density < density else (lo, mid)
    return best


def patterns_at(kind: str, shape: Shape, density: float, block_size: int = 128) -> list[P.BlockPattern]:
    """One pattern per head of ``kind`` at about ``density``."""
    lay = shape.layout
    if density >= 1.0:
        return [P.build("dense", lay, block_size=block_size)] * shape.heads
    if kind == "topk":  # different lists per head and per query block
        return topk_selection_at(shape, density, block_size).to_patterns()
    if kind == "random":  # a different mask per head: exercises head fusion
        return [P.build("random_blocks", lay, block_size=block_size, density=density, seed=h) for h in range(shape.heads)]
    if kind == "diagonal":
        pat = _with_width(lambda w: P.build("diagonal", lay, block_size=block_size, width=w), lay, density)
    elif kind == "multi_diagonal":
        pat = _with_width(lambda w: P.build("multi_diagonal", lay, block_size=block_size, width=w), lay, density)
    elif kind == "diag+stripes":
        def build(w):
            parts = [{"name": "diagonal", "params": {"width": w}}, {"name": "vertical_stripe", "params": {"sink_frames": 1}}]
            return P.build("union", lay, block_size=block_size, patterns=parts)

        pat = _with_width(build, lay, density)
    else:
        raise ValueError(f"unknown pattern kind {kind!r}; choose from {', '.join(KINDS)}")
    return [pat] * shape.heads


def spot_check(out: torch.Tensor, q, k, v, patterns, scale: float, query_blocks=(0, -1)) -> float:
    """Max relative error of ``out`` against exact float32 attention on a few query blocks of every head."""
    worst = 0.0
    for h, pat in enumerate(patterns):
        n, bs = pat.layout.num_tokens, pat.block_size
        for qb in query_blocks:
            qb = qb % pat.num_q_blocks
            rows = slice(qb * bs, min(n, (qb + 1) * bs))
            kept = pat.kv_indices[qb, : int(pat.kv_counts[qb])].long()
            if kept.numel() == 0:
                continue
            cols = (kept[:, None] * bs + torch.arange(bs)[None, :]).reshape(-1)
            cols = cols[cols < n].to(q.device)
            s = (q[0, h, rows].float() @ k[0, h, cols].float().T) * scale
            ref = torch.softmax(s, -1) @ v[0, h, cols].float()
            err = (out[0, h, rows].float() - ref).norm() / ref.norm()
            worst = max(worst, float(err))
    return worst


def run(shapes, densities, kinds, backends, dtype=torch.bfloat16, check=True, log=print, rounds: int = 1,
        baseline_per_case: bool = False) -> list[dict]:
    """Rows of ms and efficiency per (shape, pattern, density, backend). With ``rounds`` > 1 every timing
    (cuDNN's baseline too) is repeated that many times, the backends of a case interleaved, and the row
    keeps the median (``ms_rounds`` lists them): one slow stretch of the GPU then moves no single row.
    ``baseline_per_case``: cuDNN dense is also timed inside every case's rounds, before its backends, and
    that case's rows divide by it (``cudnn_case_ms_rounds``): on a GPU at its power cap the clocks drift
    over a shape's cases, and a ratio is fairest between timings taken together."""
    import statistics

    rows = []
    for named in shapes:  # a name in SHAPES, or a Shape
        shape = SHAPES[named] if isinstance(named, str) else named
        shape_name = shape.name
        n, h, d = shape.layout.num_tokens, shape.heads, shape.head_dim
        q, k, v = shape_tensors(shape, dtype)
        scale = 1.0 / math.sqrt(d)
        cudnn_rounds = [median_ms(lambda: cudnn_dense(q, k, v)) for _ in range(rounds)]
        cudnn_ms = statistics.median(cudnn_rounds)
        shape_str = f"1x{h}x{n}x{d}" + (f" (+{shape.layout.num_text} text {shape.layout.text_position})" if shape.layout.num_text else "")
        log(f"{shape_name} {shape_str}: cuDNN dense {cudnn_ms:.2f} ms")
        rows.append(dict(backend="cudnn", shape=shape_name, shape_str=shape_str, pattern="dense", density=1.0,
                         ms=cudnn_ms, cudnn_dense_ms=cudnn_ms, efficiency=1.0, ms_rounds=cudnn_rounds))
        cases = [("dense", 1.0)] + [(kind, dens) for kind in kinds for dens in densities if dens < 1.0]
        for kind, dens in cases:
            pats = patterns_at(kind, shape, dens)
            density = sum(p.density for p in pats) / len(pats)
            call = AttentionCall(torch.device("cuda"), dtype, 1, h, n, d, tuple(pats), False)
            runnable, errors, times = [], {}, {}
            for bname in backends:
                backend, setting = backend_spec(bname)
                reason = backend.cannot_run(call)
                if reason:
                    log(f"  skip {bname}: {reason}")
                    continue
                with setting():
                    out, _ = backend.run(q, k, v, call, scale)  # warm-up: compile, caches
                errors[bname] = spot_check(out, q, k, v, pats, scale) if check else None
                del out
                runnable.append((bname, backend, setting))
                times[bname] = []
            case_cudnn = []
            for _ in range(rounds):
                if baseline_per_case and runnable:
                    case_cudnn.append(median_ms(lambda: cudnn_dense(q, k, v)))
                for bname, backend, setting in runnable:
                    with setting():
                        times[bname].append(median_ms(lambda: backend.run(q, k, v, call, scale)))
            base_ms = statistics.median(case_cudnn) if case_cudnn else cudnn_ms
            extra = {"cudnn_case_ms_rounds": case_cudnn} if case_cudnn else {}
            if kind == "topk" and dens < 1.0 and "triton" in backends:
                # the same selection as it comes from the method, on the device index (one key range)
                sel = topk_selection_at(shape, dens)
                tri = get_backend("triton")
                if tri.cannot_run_selection(call, sel) is None:
                    name = "triton (device index)"
                    out, _ = tri.run_selection(q, k, v, sel, call, scale)
                    errors[name] = spot_check(out, q, k, v, pats, scale) if check else None
                    del out
                    times[name] = [median_ms(lambda: tri.run_selection(q, k, v, sel, call, scale)) for _ in range(rounds)]
                    runnable.append((name, tri, contextlib.nullcontext))
            for bname, _, _ in runnable:
                ms, err = statistics.median(times[bname]), errors[bname]
                eff = base_ms * density / ms
                rows.append(dict(backend=bname, shape=shape_name, shape_str=shape_str, pattern=kind, density=density,
                                 target_density=dens, ms=ms, cudnn_dense_ms=base_ms, efficiency=eff, spot_rel_err=err,
                                 ms_rounds=times[bname], **extra,
                                 **(_kernel_facts(bname, pats, d, q) if bname in backends else {"kernel": "tl", "kv_chunks": 1})))
                log(f"  {bname:9s} {kind:15s} density {density:6.1%}  {ms:8.3f} ms  efficiency {eff:5.2f}"
                    + (f"  err {err:.1e}" if err is not None else ""))
        del q, k, v
        torch.cuda.empty_cache()
    return rows


def backend_spec(name: str):
    """(backend, setting) for a ``--backends`` entry: a registered backend name, or ``triton@tl``: the
    triton backend with its Gluon path off (the tl kernel alone, beside ``triton`` and ``gluon``).
    ``setting`` is a context manager to time it under."""
    base, _, variant = name.partition("@")
    backend = get_backend(base)
    if not variant:
        return backend, contextlib.nullcontext
    if (base, variant) != ("triton", "tl"):
        raise ValueError(f"unknown backend variant {name!r}: the one variant is triton@tl")
    return backend, _tl_kernel_only


@contextlib.contextmanager
def _tl_kernel_only():
    from ..kernels import triton_backend

    saved = triton_backend.gluon_min_blocks
    triton_backend.gluon_min_blocks = math.inf
    try:
        yield
    finally:
        triton_backend.gluon_min_blocks = saved


def _kernel_facts(backend: str, patterns, head_dim: int, q: torch.Tensor) -> dict:
    """What a triton row ran: the kernel (gluon or tl) and, for tl, the key ranges ``auto_kv_chunks`` chose."""
    if not backend.startswith("triton"):
        return {}
    from ..kernels import triton_backend
    from ..kernels import triton_sparse as ts

    index = ts.block_index_for(patterns, q.device)
    if backend == "triton" and triton_backend.kernel_for(q, q, q, index) is not ts.block_sparse_attention:
        return {"kernel": "gluon"}
    return {"kernel": "tl", "kv_chunks": ts.auto_kv_chunks(index, head_dim, q.element_size(), q.device)}


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sparse attention kernels vs cuDNN dense (efficiency = cudnn_ms x density / ms)")
    for col in ("shape", "pattern", "density", "backend", "ms", "cuDNN dense ms", "efficiency", "speedup vs dense"):
        table.add_column(col, justify="right" if col not in ("shape", "pattern", "backend") else "left")
    for r in rows:
        table.add_row(r["shape"], r["pattern"], f"{r['density']:.1%}", r["backend"], f"{r['ms']:.3f}",
                      f"{r['cudnn_dense_ms']:.3f}", f"{r['efficiency']:.2f}", f"{r['cudnn_dense_ms'] / r['ms']:.2f}x")
    Console(width=140).print(table)


def calibrate_cost_model(layout, heads: int, head_dim: int, *, block_size: int = 128, backend: str = "triton",
                         densities=(0.05, 0.1, 0.25, 0.5), log=print):
    """A ``calibrated`` CostModel: every pattern kind timed on the current GPU at the model's shape (bf16)."""
    from ..search.cost import CostModel

    if not torch.cuda.is_available():
        raise RuntimeError("calibrating the cost model times kernels on a CUDA GPU; on CPU use CostModel.flops()")
    if block_size != 128:
        raise ValueError(f"the kernel benchmark times 128-token blocks, not {block_size}")
    shape = Shape("model", heads, head_dim, layout)
    rows = run([shape], list(densities), list(KINDS), [backend], check=False, log=log)
    return CostModel.from_rows([r for r in rows if r["backend"] == backend],
                               f"{backend} on {gpu_name()}, {heads}x{layout.num_tokens}x{head_dim}, block {block_size}")


def calibrate(shapes, densities, backend: str, out: str | None, log=print) -> list:
    """Cost-model calibration tables (``calibrate_cost_model``) for named shapes; writes one JSON per shape.

    The file is what ``sparsevdit search --cost FILE`` / ``CostModel.from_spec(FILE)`` read.
    """
    if out is not None and len(shapes) != 1:
        raise ValueError("--calibrate with --out takes one shape (--shapes NAME); without --out one file per shape")
    paths = []
    for name in shapes:
        shape = SHAPES[name]
        cm = calibrate_cost_model(shape.layout, shape.heads, shape.head_dim, backend=backend,
                                  densities=tuple(densities), log=log)
        log(f"{name}: {cm.describe()}")
        rows = cm.rows()
        cols = list(rows[0])
        log("  ".join(f"{c if c == 'family' else 'd=' + c:>14s}" for c in cols))
        for r in rows:
            log("  ".join(f"{str(r[c]):>14s}" for c in cols))
        path = cm.save(out or f"out/bench/cost-{name}-{gpu_slug()}.json")
        log(f"wrote {path}")
        paths.append(path)
    return paths


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="wan1.3b,wan14b,hunyuan", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--densities", default="0.05,0.1,0.25,0.5", help="comma list of target densities in (0, 1]")
    parser.add_argument("--patterns", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    parser.add_argument("--backends", default=None,
                        help="comma list of sparse backends to time (cudnn dense is always timed); default flex,triton "
                             "(with --calibrate: one backend, default triton). triton@tl: the triton backend with "
                             "its Gluon path off (the tl kernel alone); gluon: the Gluon kernel at every density")
    parser.add_argument("--out", default=None,
                        help="result JSON (default out/bench/kernels-<gpu>.json; with --calibrate "
                             "out/bench/cost-<shape>-<gpu>.json; the repository's results: pass bench/results/...)")
    parser.add_argument("--no-check", action="store_true", help="skip the float32 spot check of each output")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every row this many times (backends interleaved) and keep the median")
    parser.add_argument("--baseline-per-case", action="store_true",
                        help="time cuDNN dense inside every case's rounds too and divide that case's rows by it "
                             "(fairer when the GPU's clocks drift, e.g. at its power cap; one more timing per case)")
    parser.add_argument("--calibrate", action="store_true",
                        help="write the cost model's calibration table instead (calibrate_cost_model): "
                             "relative kernel time (kernel ms / cuDNN dense ms) per pattern family and density at "
                             "each shape of --shapes, timed on this GPU; use the file with "
                             "`sparsevdit search --cost FILE` (--patterns and --no-check do not apply)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU")
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {', '.join(SHAPES)}")
    densities = [float(x) for x in args.densities.split(",")]
    if args.calibrate:
        backends = (args.backends or "triton").split(",")
        if len(backends) != 1:
            parser.error("--calibrate times one sparse backend: give --backends NAME")
        try:
            calibrate(shapes, [d for d in densities if d < 1.0], backends[0], args.out)
        except ValueError as exc:
            parser.error(str(exc))
        return 0
    backends = (args.backends or "flex,triton").split(",")
    try:
        for name in backends:
            backend_spec(name)
    except (BackendError, ValueError) as exc:
        parser.error(str(exc))
    rows = run(shapes, densities, args.patterns.split(","), backends,
               check=not args.no_check, rounds=args.rounds, baseline_per_case=args.baseline_per_case)
    print_table(rows)
    out = args.out or f"out/bench/kernels-{gpu_slug()}.json"  # never a tracked result by default
    path = write_json(out, {**environment(), "rows": rows})
    print(f"wrote {path}")
    return 0
