"""Several GPUs: one full-size transformer forward under diffusers' Ulysses context parallelism, dense and
sparse, beside the same forward on one GPU, in one run (issue 19).

Launch one process per GPU (NCCL; NVLink multicast off, as a shared host needs):

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \\
      PYTHONPATH=src torchrun --nproc-per-node 2 -m sparsevdit.bench.ulysses --models wan14b --out ulysses.json

Every rank builds the same random-weight transformer on its GPU (``bench e2e``'s specs; the same seed,
so the same weights). Rows, timed with CUDA events after a warm-up (the median of ``--rep``): on one GPU
(each rank alone, before parallelism) dense cuDNN and the ``mixed_plan`` at each density; then
``model.enable_parallelism(ContextParallelConfig(ulysses_degree=P))`` and the same rows on P GPUs
(rank 0 writes the result). ``scaling`` = 1-GPU ms / (P x P-GPU ms); ``speedup`` of a sparse row is
against the dense row of the same GPU count. Only models with a diffusers ``_cp_plan`` (Wan) run.
``--device cpu`` with gloo and ``--models tiny`` is the smoke run the tests make.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch


def run(models, densities, *, warmup: int, rep: int, device_type: str, log=print) -> list[dict]:
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    import sparsevdit
    from ..integrations.diffusers import model_signature
    from . import e2e

    rank, world = dist.get_rank(), dist.get_world_size()
    if device_type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
        dtype = torch.bfloat16
    else:
        device, dtype = torch.device("cpu"), torch.float32
    rows = []
    for name in models:
        spec = e2e.MODELS[name]
        torch.manual_seed(0)
        model = e2e.build_model(spec, device, dtype)
        inputs = e2e.make_inputs(spec, device, dtype)
        if getattr(model, "_cp_plan", None) is None:
            raise SystemExit(f"{name}: {type(model).__name__} has no diffusers _cp_plan; Ulysses runs Wan models")
        sig, layout = model_signature(model), spec.layout
        plans = {d: e2e.mixed_plan(sig, layout, d, block_size=spec.block_size) for d in densities}

        def forward():
            with torch.no_grad():
                return model(**inputs, return_dict=False)[0]

        def timed(label, gpus, plan=None):
            if plan is not None:
                sparsevdit.apply(model, plan)
            try:
                with e2e._sdpa_context("cudnn" if device.type == "cuda" else "default"):
                    times = e2e.time_calls(forward, warmup, rep, device)
            finally:
                if plan is not None:
                    sparsevdit.remove(model)
            dist.barrier()
            row = {"model": name, "row": label, "gpus": gpus, "density": 1.0 if plan is None else e2e.plan_density(plan),
                   "ms": statistics.median(times), "ms_all": times}
            rows.append(row)
            if rank == 0:
                log(f"  {name} {label:14s} {gpus} GPU(s)  {row['ms']:10.1f} ms  density {row['density']:.1%}")
            return row

        single = {"dense": timed("dense", 1)}
        for d, plan in plans.items():
            single[d] = timed(f"plan {d:.0%}", 1, plan)
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
        multi = {"dense": timed("dense", world)}
        for d, plan in plans.items():
            multi[d] = timed(f"plan {d:.0%}", world, plan)
        for key, row in multi.items():
            row["scaling"] = single[key]["ms"] / (world * row["ms"])
            row["speedup_vs_dense_same_gpus"] = multi["dense"]["ms"] / row["ms"]
            row["speedup_vs_1gpu_same_row"] = single[key]["ms"] / row["ms"]
        for key, row in single.items():
            row["speedup_vs_dense_same_gpus"] = single["dense"]["ms"] / row["ms"]
        del model, inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="wan14b")
    ap.add_argument("--densities", default="0.1,0.2")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rep", type=int, default=3)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--out", default="out/bench/ulysses.json")
    args = ap.parse_args(argv)
    import torch.distributed as dist

    from .common import environment, write_json

    if "RANK" not in os.environ:
        ap.error("launch one process per GPU with torchrun --nproc-per-node P (see --help)")
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    if args.device == "cpu":
        torch.accelerator.device_count = lambda: 1  # diffusers places rank r on device r % device_count()
    try:
        rows = run([m for m in args.models.split(",") if m], [float(x) for x in args.densities.split(",") if x],
                   warmup=args.warmup, rep=args.rep, device_type=args.device)
        if dist.get_rank() == 0:
            path = write_json(args.out, {**environment(), "benchmark": "ulysses", "world": dist.get_world_size(),
                                         "rows": rows})
            print(f"wrote {path}")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
