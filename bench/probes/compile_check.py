"""Compile the Triton kernel for Hopper (sm_90) on any machine, GPU or not, and report per config.

    PYTHONPATH=src python bench/probes/compile_check.py --configs M128N64w4s2,M128N64w4s2-ws --head-dims 128

Triton's compiler (MLIR passes, ptxas) needs no GPU, so whether a config compiles (warp specialisation
in Triton 3.6 rejects some kernels with ``PassManager::run failed``), its shared memory, registers and
spills, and whether it emits wgmma / setmaxnreg can be checked here before spending device time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))
sys.path.insert(0, os.path.dirname(__file__))

from kernel_variants import parse_config  # noqa: E402
from sparsevdit.kernels import triton_sparse as ts  # noqa: E402


def signature(cfg: ts.KernelConfig, head_dim: int, dtype: str = "bf16") -> dict[str, str]:
    qo = f"tensordesc<{dtype}[1,1,{cfg.block_m},{head_dim}]>" if cfg.host_desc else f"*{dtype}"
    kv = f"tensordesc<{dtype}[1,1,{cfg.block_n},{head_dim}]>" if cfg.host_desc else f"*{dtype}"
    sig = {"Q": f"*{dtype}", "K": f"*{dtype}", "V": f"*{dtype}", "O": f"*{dtype}", "Qd": qo, "Kd": kv, "Vd": kv,
           "Od": qo, "LSE": "*fp32", "KV_IDX": "*i32", "SCHED": "*i32", "HMAP_QO": "*i32",
           "HMAP_KV": "*i32", "PERM": "*i32"}
    for t in "qkvo":
        for s in "bhn":
            sig[f"stride_{t}{s}"] = "i32"
    sig |= {"qk_scale": "fp32", "window": "i32", "alpha": "fp32", "d_lo": "i32", "d_hi": "i32", "bar_hi": "i32"}
    for name in ("N", "NREC", "B", "NQB", "MAXW", "H_QO", "H_KV"):
        sig[name] = "i32"
    return sig


def compile_config(cfg: ts.KernelConfig, head_dim: int, even_n: bool = False, store_lse: bool = False,
                   permuted: bool = False, chunked: bool = False, use_dist: bool = False) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ts._load_triton()
    constexprs = dict(HEAD_DIM=head_dim, BLOCK=128, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, EVEN_N=even_n,
                      USE_DIST=use_dist, STORE_LSE=store_lse, USE_DESC=True, WARP_SPEC=cfg.warp_spec,
                      HOST_DESC=cfg.host_desc, DOT_F32=False, PERMUTED=permuted, ONE_LOOP=cfg.one_loop,
                      HEAD_MAP=permuted, PERSISTENT=cfg.persistent, CHUNKED=chunked,
                      LAZY_RESCALE=cfg.lazy_rescale)
    sig = signature(cfg, head_dim) | {k: "constexpr" for k in constexprs}
    src = ASTSource(ts._block_sparse_fwd, sig, constexprs=constexprs)
    row = {"config": cfg.label(), "head_dim": head_dim, "even_n": even_n, "store_lse": store_lse, "permuted": permuted,
           "chunked": chunked, "use_dist": use_dist}
    try:
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 128),
                                options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                                         **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {})})
    except Exception as exc:  # a config the compiler rejects is a result, not a crash
        row["error"] = str(exc).strip().splitlines()[-1][:200]
        return row
    ptx = kernel.asm["ptx"]
    row |= {"shared_bytes": kernel.metadata.shared, "wgmma": ptx.count("wgmma.mma_async"),
            "setmaxnreg": ptx.count("setmaxnreg")}
    row |= cubin_resources(kernel.asm["cubin"])
    return row


def cubin_resources(cubin: bytes) -> dict:
    """Registers, spill stores/loads and stack frame of the kernel, from cuobjdump's resource usage."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if not found:
        return {}
    return {"registers": int(found[1]), "stack_bytes": int(found[2]), "local_bytes": int(found[4])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="M128N64w4s2,M128N64w4s2-ws,M128N128w4s2-ws,M128N128w8s3")
    ap.add_argument("--head-dims", default="128")
    ap.add_argument("--variants", default="tail,even", help="tail (N not a block multiple), even, lse, perm, chunked (key-chunk merge epilogue), dist (the distance transform: UltraViCo)")
    args = ap.parse_args(argv)
    for d in (int(x) for x in args.head_dims.split(",")):
        for label in args.configs.split(","):
            for variant in args.variants.split(","):
                row = compile_config(parse_config(label), d, even_n=variant == "even",
                                     store_lse=variant in ("lse", "chunked"), permuted=variant == "perm",
                                     chunked=variant == "chunked", use_dist=variant == "dist")
                row["variant"] = variant
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
