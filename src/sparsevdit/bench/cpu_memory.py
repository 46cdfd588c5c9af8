"""Peak memory of ``sparse_attention`` on a CPU at long sequences, each case in a fresh process.

The peak resident set of a process that imports sparsevdit, makes q/k/v, builds the pattern and runs
one call: what a CPU user at 16K-32K tokens needs. Linux's ``VmHWM`` is read, not ``ru_maxrss``: the
latter survives ``exec`` and so reports the parent's peak when a large process (a test run) starts the
case. ``auto`` must stay under the
budget by design (the blockwise backend); ``reference`` shows what the N x N path costs.

    python -m sparsevdit.bench.cpu_memory --out out/bench/cpu-memory.json
    python -m sparsevdit.bench.cpu_memory --backends auto,reference --out bench/results/cpu-memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CASE = """
import json, resource, sys, time, torch, sparsevdit as sv
def peak_mb():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):  # not Linux: ru_maxrss is in bytes on macOS, kilobytes elsewhere
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024
frames, heads, dim, backend, target = {frames}, {heads}, {dim}, {backend!r}, {density}
layout = sv.TokenLayout(frames=frames, height=32, width=32)
n = layout.num_tokens
# the diagonal width whose density is nearest the target
best = min((abs(sv.patterns.build("diagonal", layout, width=w).density - target), w) for w in range(128, n, 128))[1]
pattern = sv.patterns.build("diagonal", layout, width=best)
gen = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, heads, n, dim, generator=gen) for _ in range(3))
before = peak_mb()
start = time.perf_counter()
out = sv.sparse_attention(q, k, v, pattern, layout=layout, backend=backend)
seconds = time.perf_counter() - start
from sparsevdit.kernels.registry import AttentionCall, select_backend
call = AttentionCall(q.device, q.dtype, 1, heads, n, dim, (pattern,) * heads, False)
chosen = select_backend(backend, call).name
print(json.dumps({{"tokens": n, "heads": heads, "head_dim": dim, "backend": backend, "ran_on": chosen,
                  "density": pattern.density, "width": best, "seconds": seconds, "finite": bool(torch.isfinite(out).all()),
                  "peak_rss_before_call_mb": before, "peak_rss_mb": peak_mb()}}))
"""


def measure(frames: int, heads: int, dim: int, backend: str, density: float) -> dict:
    """One case in a fresh Python: its peak RSS is this call's alone."""
    code = CASE.format(frames=frames, heads=heads, dim=dim, backend=backend, density=density)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:]
        error = last[0] if last else f"killed by signal {-proc.returncode} (out of memory?)"
        return {"tokens": frames * 1024, "heads": heads, "backend": backend, "error": error}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", default="16,32", help="frames of 32 x 32 tokens: 16 -> 16,384 tokens, 32 -> 32,768")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--density", type=float, default=0.07)
    parser.add_argument("--backends", default="auto", help="comma-separated: auto, blockwise, reference, ...")
    parser.add_argument("--out", default="out/bench/cpu-memory.json")
    args = parser.parse_args(argv)
    from . import common

    rows = []
    for frames in (int(f) for f in args.frames.split(",")):
        for backend in args.backends.split(","):
            row = measure(frames, args.heads, args.head_dim, backend, args.density)
            rows.append(row)
            print(json.dumps(row))
    common.write_json(args.out, {"environment": common.environment(), "rows": rows,
                                 "date": time.strftime("%Y-%m-%d")})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
