"""Time kernel variants of our Triton block-sparse kernel side by side with cuDNN dense SDPA (GPU).

    PYTHONPATH=src python bench/probes/kernel_variants.py --shapes wan1.3b,wan14b,hunyuan --out $OUT/variants.json

For each shape (``sparsevdit.bench.kernels.SHAPES``) and pattern case (kind at a density, from
``patterns_at``), every variant runs on the same q/k/v and index: ``auto`` (the autotuned default path) and each forced
``KernelConfig`` label of ``--configs``. Each row records ms (``triton.testing.do_bench`` median),
efficiency = cudnn_dense_ms x density / ms, and a float32 spot check of the first and last query
blocks of every head. A variant that fails (does not compile, does not tile the block) is recorded
with its error. (The 256-row "pair program" variant measured with this script on 2026-11-23 was
removed after that run: docs/kernel.md.)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from sparsevdit.bench.common import environment, median_ms, write_json  # noqa: E402
from sparsevdit.bench.kernels import SHAPES, cudnn_dense, patterns_at, shape_tensors, spot_check  # noqa: E402
from sparsevdit.kernels import triton_sparse as ts  # noqa: E402


def parse_config(label: str) -> ts.KernelConfig:
    """``M128N64w4s2`` (optional ``-ws``: warp specialisation, ``-devdesc``: descriptors built in the
    kernel, ``-1l``: one key loop, ``-p``: persistent grid, ``-lz``: lazy softmax rescale, ``-rN``: at most N registers a thread; the order of ``KernelConfig.label``) -> KernelConfig."""
    import re

    m = re.fullmatch(r"M(\d+)N(\d+)w(\d+)s(\d+)(-ws)?(-devdesc)?(-1l)?(-p)?(-lz)?(?:-r(\d+))?", label)
    if not m:
        raise argparse.ArgumentTypeError(f"bad config label {label!r} (e.g. M128N64w4s2-ws-devdesc-1l-p)")
    return ts.KernelConfig(int(m[1]), int(m[2]), int(m[3]), int(m[4]), bool(m[5]), host_desc=not m[6],
                           one_loop=bool(m[7]), persistent=bool(m[8]), lazy_rescale=bool(m[9]),
                           maxnreg=int(m[10]) if m[10] else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="wan1.3b,wan14b,hunyuan")
    ap.add_argument("--cases", default="dense:1.0,diagonal:0.1,diagonal:0.25,diag+stripes:0.5,multi_diagonal:0.1,random:0.1",
                    help="comma list of kind:density")
    ap.add_argument("--configs", default="M128N128w8s3,M64N128w4s2,M64N64w4s3",
                    help="forced KernelConfig labels besides auto")
    ap.add_argument("--out", default="out/probes/kernel-variants.json")  # never bench/results by default
    ap.add_argument("--rounds", type=int, default=1,
                    help="time every variant this many times, interleaved, with cuDNN dense in every round; "
                         "efficiency uses the case's median cuDNN time")
    ap.add_argument("--timeout", type=float, default=None,
                    help="run each config in its own process with this limit in seconds (a kernel that hangs "
                         "or a compiler crash then costs only its own rows); the rows are merged into --out")
    args = ap.parse_args(argv)
    # timing experiments may run the warp-specialised configs the library refuses (docs/kernel.md)
    os.environ.setdefault("SPARSEVDIT_EXPERIMENTAL_WS", "1")
    if args.timeout:
        return run_isolated(args, argv if argv is not None else sys.argv[1:])
    cases = [(c.split(":")[0], float(c.split(":")[1])) for c in args.cases.split(",") if c]
    configs = [parse_config(c) for c in args.configs.split(",") if c]
    rows = []
    result = {**environment(), "benchmark": "kernel-variants", "rows": rows}
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        n, h, d = shape.layout.num_tokens, shape.heads, shape.head_dim
        q, k, v = shape_tensors(shape)
        scale = 1.0 / math.sqrt(d)
        cudnn_ms = median_ms(lambda: cudnn_dense(q, k, v))
        print(f"{shape_name} 1x{h}x{n}x{d}: cuDNN dense {cudnn_ms:.2f} ms", flush=True)
        rows.append(dict(shape=shape_name, case="dense", variant="cudnn", density=1.0, ms=cudnn_ms, efficiency=1.0))
        for kind, dens in cases:
            pats = patterns_at(kind, shape, dens)
            density = sum(p.density for p in pats) / len(pats)
            index = ts.block_index_for(pats, q.device)
            variants = [("auto", {})]
            variants += [(c.label(), dict(config=c)) for c in configs]
            fns = {}
            for name, kw in variants:
                try:
                    fn = lambda kw=kw: ts.block_sparse_attention(q, k, v, index, scale, **kw)  # noqa: E731
                    out, _ = fn()
                    fns[name] = (fn, spot_check(out, q, k, v, pats, scale))
                    del out
                except Exception as exc:  # a config that does not compile or fit: record it, go on
                    rows.append(dict(shape=shape_name, case=f"{kind} {dens:g}", variant=name, density=density,
                                     error=f"{type(exc).__name__}: {str(exc)[:300]}"))
                    print(f"  {kind:15s} {density:6.1%} {name:12s} {rows[-1]['error']}", flush=True)
            # Variants interleaved per round, cuDNN dense timed in every round: the GPU's clocks drift
            # (power cap), so a ratio is taken between timings made close together; medians kept.
            times = {name: [] for name in fns}
            base = []
            for _ in range(args.rounds):
                base.append(median_ms(lambda: cudnn_dense(q, k, v)))
                for name, (fn, _) in fns.items():
                    times[name].append(median_ms(fn))
            case_cudnn = statistics.median(base)
            for name, (fn, err) in fns.items():
                ms = statistics.median(times[name])
                rows.append(dict(shape=shape_name, case=f"{kind} {dens:g}", variant=name, density=density, ms=ms,
                                 ms_rounds=times[name], cudnn_dense_ms=case_cudnn,
                                 efficiency=case_cudnn * density / ms, spot_err=err))
                print(f"  {kind:15s} {density:6.1%} {name:12s} {ms:9.3f} ms  eff {rows[-1]['efficiency']:.3f}"
                      f"  err {err:.1e}", flush=True)
            write_json(args.out, result)
        del q, k, v
        torch.cuda.empty_cache()
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


def run_isolated(args, argv: list[str]) -> int:
    """One child process per config (each also times ``auto`` beside it), under ``args.timeout``."""
    import json
    import subprocess
    import tempfile

    base, skip = [], False
    for a in argv:  # the parent's arguments without --configs/--out/--timeout
        if skip:
            skip = False
        elif a in ("--configs", "--out", "--timeout"):
            skip = True
        elif not a.startswith(("--configs=", "--out=", "--timeout=")):
            base.append(a)
    rows = []
    result = {**environment(), "benchmark": "kernel-variants", "rows": rows}
    with tempfile.TemporaryDirectory() as tmp:
        for i, label in enumerate(c for c in args.configs.split(",") if c):
            part = os.path.join(tmp, f"{i}.json")
            cmd = [sys.executable, __file__, *base, "--configs", label, "--out", part]
            try:
                code = subprocess.run(cmd, timeout=args.timeout, check=False).returncode
                status = f"the process exited with code {code}" if code else None
            except subprocess.TimeoutExpired:
                status = f"no result within {args.timeout:g} s (the kernel hangs, or the limit is too short)"
                print(f"{label}: {status}", flush=True)
            done = json.load(open(part))["rows"] if os.path.exists(part) else []
            rows += [dict(r, process=label) for r in done]
            if status:
                rows.append(dict(variant=label, process=label, error=status))
            write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
