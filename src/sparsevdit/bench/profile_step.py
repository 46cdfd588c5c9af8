"""Profiling cost at full size: one denoising step of ``sparsevdit profile`` against one dense step.

The transformer of ``bench e2e``'s specs (full-size configs, random weights: the cost does not depend
on them) runs one forward dense, then one forward with the profile's capture on every self-attention
call (``_State.capture``, as the pipeline runners install it): ``measure_layer`` on the default
candidates of the layout with ``--rows-per-block`` sampled query rows per block, statistics summed
on the host as the profile does. Reported: warm time of each (CUDA events; the profiled forward also
measures, so it is the profile's cost per step), their ratio, peak GPU memory of each, and the memory
the profile announces up front (``measure_layer_memory``). Targets (issue 18): the profiled step fits
on one 80 GB GPU beside the model and costs at most 3x a dense step.

    PYTHONPATH=src python -m sparsevdit.bench.profile_step --models wan14b,hunyuan720p --out profile-step.json
    python -m sparsevdit.bench.profile_step --models tiny --device cpu      # a CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .common import environment, write_json


def run(models, device: str, rows_per_block: int, log=print) -> list[dict]:
    from ..integrations import diffusers as dif
    from ..plan import DensePlans
    from ..search.candidates import build, default_candidates
    from ..search.common import MaskSpec, measure_layer, measure_layer_memory, sample_rows
    from . import e2e

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    rows_out = []
    for name in models:
        spec = e2e.MODELS[name]
        model = e2e.build_model(spec, dev, dtype)
        inputs = e2e.make_inputs(spec, dev, dtype)
        layout, bs = spec.layout, spec.block_size
        sig = dif.model_signature(model)
        cands = [c for c in default_candidates(layout, bs) if not c.per_head]
        masks = [MaskSpec.of([build(c, layout, bs)] * sig.num_heads) for c in cands]
        rows = sample_rows(layout, bs, rows_per_block)
        need = measure_layer_memory(layout, bs, sig.num_heads, sig.head_dim, masks, device=str(dev))
        sums = {}

        def capture(layer, step, q, k, v):
            st = measure_layer(q, k, v, layout, bs, rows, masks)
            prev = sums.get(layer)
            sums[layer] = st.sq_err if prev is None else prev + st.sq_err
            return None

        def forward():
            with torch.no_grad():
                return model(**inputs, return_dict=False)[0]

        def timed(fn) -> tuple[float, float]:
            fn()  # warm-up
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                return float(start.elapsed_time(end)), torch.cuda.max_memory_allocated(dev) / 2**30
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3, float("nan")

        model_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
        dense_ms, dense_peak = timed(forward)
        dif.apply_diffusers(model, DensePlans(sig, block_size=bs))
        dif._state(model).capture = capture
        try:
            prof_ms, prof_peak = timed(forward)
        finally:
            dif.remove_diffusers(model)
        row = {"model": name, "tokens": layout.num_tokens, "layers": sig.num_layers, "heads": sig.num_heads,
               "candidates": len(cands), "rows_per_block": rows_per_block, "rows_measured": int(rows.numel()),
               "dense_ms": dense_ms, "profiled_ms": prof_ms, "ratio": prof_ms / dense_ms,
               "model_gib": model_gib, "dense_peak_gib": dense_peak, "profiled_peak_gib": prof_peak,
               "announced_gib": need / 2**30, "layers_measured": len(sums)}
        log(f"{name}: {layout.num_tokens:,} tokens, {len(cands)} candidates, {rows.numel():,} rows: dense step "
            f"{dense_ms:.0f} ms, profiled {prof_ms:.0f} ms ({prof_ms / dense_ms:.2f}x); peak {dense_peak:.1f} -> "
            f"{prof_peak:.1f} GiB (model {model_gib:.1f} GiB, announced +{need / 2**30:.1f} GiB)")
        rows_out.append(row)
        del model, inputs
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows_out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="wan14b,hunyuan720p", help="comma list of bench e2e's models (tiny on a CPU)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows-per-block", type=int, default=8, help="query rows measured per block (the profile's default)")
    ap.add_argument("--out", default="out/bench/profile-step.json")
    args = ap.parse_args(argv)
    from . import e2e

    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in e2e.MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(e2e.MODELS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda needs a CUDA GPU (use --models tiny --device cpu for a smoke run)")
    rows = run(models, args.device, args.rows_per_block)
    path = write_json(args.out, {**environment(), "benchmark": "profile step", "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
