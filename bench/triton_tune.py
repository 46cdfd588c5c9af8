"""Check, time and tune the Triton block-sparse kernel on a GPU (written for the lent H100).

    PYTHONPATH=src PYTHONUNBUFFERED=1 python bench/triton_tune.py --out $OUT 2>&1 | tee $OUT/log

(a) correctness: the kernel vs a float32 torch reference (full check at a small shape, sampled query
    blocks, the empty one and the partial last one included, at the full shape); ||out-ref||/||ref||.
(b) timing (triton.testing.do_bench, median): cuDNN dense SDPA vs our kernel on random block masks
    (densities 5-100%, per-head masks with varying row counts) and structured masks, shape
    1 x 12 x 32760 x 128 bf16; efficiency = cudnn_ms * density / ms (density over real tokens);
    FlexAttention on the same masks with --flex.
(c) a config sweep (--configs grid|LABEL,...) and schedule comparison; JSON under --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import sparsevdit as sv  # noqa: E402
from sparsevdit.kernels import triton_sparse as ts  # noqa: E402
from sparsevdit.patterns import BlockPattern, num_blocks  # noqa: E402

LAYOUT = sv.TokenLayout(21, 30, 52)  # 32,760 tokens: 255 full blocks of 128 and one of 120
LOG: list[str] = []


def log(msg: str) -> None:
    print(msg, flush=True)
    LOG.append(msg)


def bench(fn, warmup=50, rep=300) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------
def random_patterns(layout, heads, density, seed, block_size=128, empty_row=False) -> list[BlockPattern]:
    """Independent Bernoulli block masks per head (row counts vary, as in real patterns)."""
    nb = num_blocks(layout.num_tokens, block_size)
    pats = []
    for h in range(heads):
        gen = torch.Generator().manual_seed(seed * 1000 + h)
        mask = torch.rand(nb, nb, generator=gen) < density
        mask[torch.arange(nb), torch.randint(0, nb, (nb,), generator=gen)] = True  # >= 1 block a row
        if density >= 1.0:
            mask[:] = True
        if empty_row:
            mask[h % nb] = False
        pats.append(BlockPattern.from_block_mask("bench_random", {"d": density, "seed": seed, "h": h}, layout,
                                                 block_size, mask, "frame_major"))
    return pats


def structured_patterns(layout, heads, block_size=128) -> dict[str, list[BlockPattern]]:
    b = lambda name, **kw: sv.patterns.build(name, layout, block_size=block_size, **kw)  # noqa: E731
    tpf = layout.tokens_per_frame
    out = {
        "diagonal(2 frames)": [b("diagonal", width=2 * tpf)] * heads,
        "multi_diagonal": [b("multi_diagonal", width=2 * tpf)] * heads,
        "diag+stripe": [b("union", patterns=[{"name": "diagonal", "params": {"width": 2 * tpf}},
                                             {"name": "vertical_stripe", "params": {"sink_frames": 1}}])] * heads,
        "mixed heads": [b("diagonal", width=tpf), b("diagonal", width=4 * tpf), b("dense"),
                        b("multi_diagonal", width=2 * tpf)] * (heads // 4),
    }
    return out


def mean_density(pats) -> float:
    return sum(p.density for p in pats) / len(pats)


# --------------------------------------------------------------------------------------------
# correctness
# --------------------------------------------------------------------------------------------
def ref_rows(q, k, v, pat, h, qb, scale):
    """float32 reference for query block qb of head h (batch 0): (out [rows, D], lse [rows])."""
    n, bs = q.shape[2], pat.block_size
    r0, r1 = qb * bs, min(n, (qb + 1) * bs)
    s = (q[0, h, r0:r1].float() @ k[0, h].float().T) * scale
    keep = pat.block_mask[qb].repeat_interleave(bs)[:n].to(q.device)
    s = s.masked_fill(~keep[None, :], float("-inf"))
    lse = torch.logsumexp(s, -1)
    w = torch.nan_to_num(torch.exp(s - lse[:, None]))
    return w @ v[0, h].float(), lse


def check_kernel(q, k, v, pats, scale, config=None, sample=None, label="") -> dict:
    index = ts.block_index_for(pats, q.device)
    out, lse = ts.block_sparse_attention(q, k, v, index, scale, return_lse=True, config=config)
    torch.cuda.synchronize()
    nq = pats[0].num_q_blocks
    num = den = 0.0
    lse_err = 0.0
    bad_empty = 0
    for h, p in enumerate(pats):
        qbs = range(nq) if sample is None else sorted({0, nq - 1, *torch.randint(0, nq, (sample,)).tolist(),
                                                        *[i for i in range(nq) if int(p.kv_counts[i]) == 0]})
        for qb in qbs:
            ro, rl = ref_rows(q, k, v, p, h, qb, scale)
            bs = p.block_size
            o = out[0, h, qb * bs: qb * bs + ro.shape[0]].float()
            num += float((o - ro).pow(2).sum())
            den += float(ro.pow(2).sum())
            got = lse[0, h, qb * bs: qb * bs + ro.shape[0]]
            fin = torch.isfinite(rl)
            if not torch.equal(fin, torch.isfinite(got)):
                bad_empty += 1
            if fin.any():
                lse_err = max(lse_err, float((got - rl)[fin].abs().max()))
            if (~fin).any() and float(o[~fin].abs().max()) != 0:
                bad_empty += 1
    rel = math.sqrt(num / max(den, 1e-30))
    finite = bool(torch.isfinite(out).all())
    ok = rel < 1e-2 and finite and bad_empty == 0 and lse_err < 1e-2
    log(f"  check {label}: rel_err {rel:.2e}  lse_max_err {lse_err:.2e}  finite {finite}  "
        f"empty-row errors {bad_empty}  -> {'OK' if ok else 'FAIL'}")
    return dict(label=label, rel_err=rel, lse_max_err=lse_err, finite=finite, empty_row_errors=bad_empty, ok=ok)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def config_grid(head_dim: int, with_ws: bool = False) -> list[ts.KernelConfig]:
    grid = []
    for bn in (128, 64):
        for w in (4, 8):
            for s in (2, 3, 4):
                for ws in ((True, False) if with_ws else (False,)):
                    if head_dim == 128 and bn == 128 and s == 4:
                        continue  # Q + 4 x (K + V) tiles exceed shared memory
                    grid.append(ts.KernelConfig(128, bn, w, s, ws))
    return grid


def parse_configs(spec: str, head_dim: int) -> list[ts.KernelConfig]:
    if spec in ("grid", "gridws"):
        return config_grid(head_dim, spec == "gridws")
    if spec == "default":
        return list(ts.HOPPER_CONFIGS[head_dim])
    out = []
    for lab in spec.split(","):
        # M128N64w4s3-ws[-ptr]
        ws, ptr, dev = "-ws" in lab, "-ptr" in lab, "-devdesc" in lab
        core = lab.split("-")[0]
        m = int(core[1:core.index("N")])
        n = int(core[core.index("N") + 1: core.index("w")])
        w = int(core[core.index("w") + 1: core.index("s")])
        s = int(core[core.index("s") + 1:])
        out.append(ts.KernelConfig(m, n, w, s, ws, not ptr, not dev))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dims", default="128,64")
    ap.add_argument("--densities", default="0.05,0.1,0.25,0.5,1.0")
    ap.add_argument("--configs", default="default", help="grid | default | comma list of labels (M128N128w4s2-ws)")
    ap.add_argument("--configs64", default=None, help="config spec for head_dim 64 (default: --configs)")
    ap.add_argument("--sweep-densities", default="0.1,0.5,1.0")
    ap.add_argument("--schedules", default="head,lpt,natural")
    ap.add_argument("--flex", action="store_true", help="also time FlexAttention on the same masks")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--rep", type=int, default=300)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    result = dict(env=dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                           date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                           command=" ".join(sys.argv)), checks=[], sweep=[], schedules=[], timings=[])
    import triton

    result["env"]["triton"] = triton.__version__
    log(f"{result['env']}")
    heads, n = args.heads, LAYOUT.num_tokens
    dtype = torch.bfloat16

    def save():
        result["log"] = LOG
        with open(os.path.join(args.out, "triton_tune.json"), "w") as f:
            json.dump(result, f, indent=1)

    # (a) correctness ------------------------------------------------------------------------
    if not args.skip_check:
        log("== correctness (float32 reference)")
        small = sv.TokenLayout(5, 20, 41)  # 4100 tokens
        for d in (64, 128):
            for dt_ in (torch.bfloat16, torch.float16):
                q, k, v = (torch.randn(1, 4, small.num_tokens, d, device=dev, dtype=dt_) for _ in range(3))
                pats = [random_patterns(small, 1, dens, 7 + i, empty_row=True)[0] for i, dens in enumerate((0.1, 0.3, 0.6, 1.0))]
                pats = [BlockPattern.from_block_mask("chk", {"i": i, "d": d, "t": str(dt_)}, small, 128, p.block_mask, "frame_major")
                        for i, p in enumerate(pats)]
                try:
                    result["checks"].append(check_kernel(q, k, v, pats, d ** -0.5, label=f"4x4100x{d} {dt_} all rows"))
                except Exception:
                    log(traceback.format_exc())
                    result["checks"].append(dict(label=f"4100x{d} {dt_}", ok=False, error=traceback.format_exc()))
        save()

    for head_dim in [int(x) for x in args.head_dims.split(",")]:
        scale = head_dim ** -0.5
        q, k, v = (torch.randn(1, heads, n, head_dim, device=dev, dtype=dtype) for _ in range(3))
        shape = f"1x{heads}x{n}x{head_dim}"
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            f_cudnn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)  # noqa: E731
            cudnn_ms = bench(f_cudnn, rep=args.rep)
            cudnn_ms2 = bench(f_cudnn, rep=args.rep)
        tflops = 4 * n * n * head_dim * heads / cudnn_ms / 1e9
        log(f"== {shape} bf16: cuDNN dense {cudnn_ms:.3f} ms (again {cudnn_ms2:.3f}) = {tflops:.0f} TFLOP/s")
        result["timings"].append(dict(backend="cudnn", shape=shape, pattern="dense", density=1.0, ms=cudnn_ms,
                                      ms_repeat=cudnn_ms2, efficiency=1.0))
        save()

        # (c) config sweep ---------------------------------------------------------------
        configs = parse_configs(args.configs64 if head_dim == 64 and args.configs64 else args.configs, head_dim)
        sweep_masks = {d: random_patterns(LAYOUT, heads, d, 100 + int(d * 100)) for d in map(float, args.sweep_densities.split(","))}
        best = {}
        if len(configs) > 1:
            log(f"-- config sweep {shape}: {len(configs)} configs at densities {list(sweep_masks)}")
            for cfg in configs:
                row = dict(shape=shape, config=cfg.label())
                try:
                    t0 = time.time()
                    for d, pats in sweep_masks.items():
                        index = ts.block_index_for(pats, dev)
                        fn = lambda: ts.block_sparse_attention(q, k, v, index, scale, config=cfg)  # noqa: E731
                        fn()
                        torch.cuda.synchronize()
                        ms = bench(fn, rep=max(100, args.rep // 2))
                        row[f"ms@{d}"] = ms
                        row[f"eff@{d}"] = cudnn_ms * mean_density(pats) / ms
                    row["wall_s"] = time.time() - t0
                    log("   " + cfg.label().ljust(22) + "  ".join(f"{d:.2f}: {row[f'ms@{d}']:.3f} ms eff {row[f'eff@{d}']:.3f}" for d in sweep_masks))
                except Exception as exc:
                    row["error"] = repr(exc)[:300]
                    log(f"   {cfg.label():22s} FAILED {repr(exc)[:200]}")
                result["sweep"].append(row)
                save()
            ok = [r for r in result["sweep"] if r["shape"] == shape and "error" not in r]
            if ok:
                score = lambda r: sum(r[f"eff@{d}"] for d in sweep_masks)  # noqa: E731
                ranked = sorted(ok, key=score, reverse=True)
                log("   ranked: " + ", ".join(f"{r['config']} ({score(r) / len(sweep_masks):.3f})" for r in ranked[:6]))
                best = {"config": parse_configs(ranked[0]["config"], head_dim)[0]}
        cfg_best = best.get("config")  # None: the autotuned default path

        # correctness of the chosen path at the full shape (sampled query blocks)
        if not args.skip_check:
            pats = random_patterns(LAYOUT, heads, 0.25, 5, empty_row=True)
            result["checks"].append(check_kernel(q, k, v, pats, scale, config=cfg_best, sample=6,
                                                 label=f"{shape} 25% sampled, {cfg_best.label() if cfg_best else 'autotuned'}"))
            save()

        # schedules ----------------------------------------------------------------------
        sched_list = [s for s in args.schedules.split(",") if s]
        if len(sched_list) > 1:
            for d in (0.1, 0.5):
                pats = random_patterns(LAYOUT, heads, d, 300 + int(d * 100))
                index = ts.block_index_for(pats, dev)
                line = []
                for sch in sched_list:
                    fn = lambda: ts.block_sparse_attention(q, k, v, index, scale, schedule=sch, config=cfg_best)  # noqa: E731
                    fn()
                    ms = bench(fn, rep=args.rep)
                    eff = cudnn_ms * mean_density(pats) / ms
                    result["schedules"].append(dict(shape=shape, density=d, schedule=sch, ms=ms, efficiency=eff))
                    line.append(f"{sch}: {ms:.3f} ms eff {eff:.3f}")
                log(f"-- schedules {shape} random {d:.0%}: " + "  ".join(line))
            save()

        # (b) timings at densities and structured masks ------------------------------------
        cases = [(f"random {d:.0%}", random_patterns(LAYOUT, heads, d, 200 + int(d * 100)))
                 for d in map(float, args.densities.split(","))]
        cases += list(structured_patterns(LAYOUT, heads).items())
        flex_fn = None
        if args.flex:
            from sparsevdit.kernels import flex as flexmod

            flex_fn = flexmod._compiled_flex()
        log(f"-- timings {shape} ({'config ' + cfg_best.label() if cfg_best else 'autotuned default'})")
        log(f"   {'pattern':22s} {'density':>8s} {'ours ms':>9s} {'eff':>6s} {'flex ms':>9s} {'flex eff':>8s} {'speedup':>7s}")
        for name, pats in cases:
            dens = mean_density(pats)
            index = ts.block_index_for(pats, dev)
            fn = lambda: ts.block_sparse_attention(q, k, v, index, scale, config=cfg_best)  # noqa: E731
            fn()
            ms = bench(fn, rep=args.rep)
            row = dict(backend="triton", shape=shape, pattern=name, density=dens, ms=ms, cudnn_ms=cudnn_ms,
                       efficiency=cudnn_ms * dens / ms, config=cfg_best.label() if cfg_best else "autotuned")
            fl = ""
            if flex_fn is not None:
                try:
                    bm = flexmod.block_mask_for(pats, dev)
                    ffn = lambda: flex_fn(q, k, v, block_mask=bm, scale=scale)  # noqa: E731
                    ffn()
                    fms = bench(ffn, rep=args.rep)
                    row.update(flex_ms=fms, flex_efficiency=cudnn_ms * dens / fms, speedup_vs_flex=fms / ms)
                    fl = f"{fms:9.3f} {cudnn_ms * dens / fms:8.3f} {fms / ms:6.2f}x"
                except Exception as exc:
                    fl = f"flex failed {repr(exc)[:80]}"
            log(f"   {name:22s} {dens:8.3f} {ms:9.3f} {row['efficiency']:6.3f} {fl}")
            result["timings"].append(row)
            save()
    save()
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
