#!/usr/bin/env bash
# Issue 17 on one GPU: what a dynamic method's selection costs inside a full-size forward, and the
# kernel rows for the uneven lists top-k selects. Run from the repository root on the device machine
# (diffusers carried as a wheel, see bench/results/README.md):
#   bash bench/dynamic_overhead.sh e2e wan1.3b,cogvideox1.5,wan14b 5   # ~6 min on an H200
#   bash bench/dynamic_overhead.sh e2e hunyuan720p 3                    # ~7 min
#   bash bench/dynamic_overhead.sh kernels wan1.3b,hunyuan              # ~2 min
# Every e2e model: dense cuDNN, the 10% mixed plan, topk at 10% of the key blocks selected at every
# step and every 5th, svg at sparsity 0.1 (each forward a new denoising step; see bench/e2e.py).
set -uo pipefail
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
OUT=${OUT:-out/dynamic}
mkdir -p "$OUT"
case "${1:-}" in
  e2e)
    for m in ${2//,/ }; do
      timeout "${LIMIT:-560}" "$PY" bench/e2e.py --models "$m" --densities 0.1 --no-dense-plan --warmup 1 --rep "${3:-5}" \
        --method 'topk:{"tau": null, "fraction": 0.1}' \
        --method 'topk:{"tau": null, "fraction": 0.1, "reuse_every": 5}' \
        --method 'svg:{"sparsity": 0.1}' \
        --out "$OUT/e2e-$m.json" 2>&1 | tee -a "$OUT/e2e-log.txt"
    done
    ;;
  kernels)
    for s in ${2//,/ }; do
      timeout "${LIMIT:-560}" "$PY" bench/kernels.py --shapes "$s" --patterns topk --densities 0.05,0.1,0.25 \
        --backends triton,flex --rounds 2 --baseline-per-case --out "$OUT/kernels-topk-$s.json" 2>&1 | tee -a "$OUT/kernels-log.txt"
    done
    ;;
  *)
    echo "usage: bash bench/dynamic_overhead.sh e2e MODELS [REP] | kernels SHAPES" >&2; exit 2 ;;
esac
