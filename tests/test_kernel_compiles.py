"""The Hopper kernel compiles for sm_90 on any machine (Triton's compiler and ptxas need no GPU).

Guards what the GPU runs but CI cannot: the autotuned configs and the warp-specialised config build,
use wgmma, and the default config does not spill (a pointer-load tail loop once cost 1.3 KB a thread).
Each check runs ``bench/probes/compile_check.py`` in a fresh process without TRITON_INTERPRET (other test
modules switch this process to the interpreter).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsevdit.kernels import triton_sparse as ts

pytestmark = pytest.mark.skipif(not ts.HAS_TRITON, reason="needs triton")
ROOT = Path(__file__).resolve().parents[1]


def compile_rows(configs: list[str], head_dim: int, variants: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "probes" / "compile_check.py"), "--configs", ",".join(configs),
                           "--head-dims", str(head_dim), "--variants", variants],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("head_dim", [64, 128])
def test_autotuned_configs_compile_without_spills(head_dim):
    # chunked: the key-chunk merge epilogue (reads the earlier launches' O and lse back)
    rows = compile_rows([c.label() for c in ts.HOPPER_CONFIGS[head_dim]], head_dim, "tail,even,lse,chunked")
    assert len(rows) == 4 * len(ts.HOPPER_CONFIGS[head_dim])
    for row in rows:
        assert "error" not in row, row
        assert row["wgmma"] > 0, row
    first = [r for r in rows if r["config"] == ts.HOPPER_CONFIGS[head_dim][0].label()]
    if all("stack_bytes" in r for r in first):  # cuobjdump found beside ptxas
        assert max(r["stack_bytes"] for r in first) <= 128, first


def test_warp_specialised_config_compiles():
    tail, permuted = compile_rows(["M128N64w4s2-ws-devdesc"], 128, "tail,perm")
    assert "error" not in tail and "error" not in permuted, (tail, permuted)
    # specialised: a producer and two consumer warpgroups with register reallocation;
    # permuted Q rows (a pointer gather) run the same config unspecialised
    assert tail["setmaxnreg"] > 0 and permuted["setmaxnreg"] == 0, (tail, permuted)


def test_persistent_configs_compile():
    rows = compile_rows(["M128N32w4s2-p", "M128N64w4s2-ws-devdesc-p"], 128, "tail,lse")
    assert all("error" not in r for r in rows), rows
    # two 4-warp persistent programs with 32-key tiles fit one SM (228 KB): persistent_programs relies on it
    assert all(r["shared_bytes"] <= 114 * 1024 for r in rows if r["config"] == "M128N32w4s2-p"), rows


def test_register_cap_and_lazy_rescale_compile():
    # measurement-only options (docs/kernel.md step table): -rN reaches ptxas as maxnreg, -lz compiles
    capped, lazy = compile_rows(["M128N32w4s2-r168", "M128N64w4s2-lz"], 128, "even")
    assert "error" not in capped and "error" not in lazy, (capped, lazy)
    if "registers" in capped:
        assert capped["registers"] <= 168, capped


def test_distance_transform_compiles_for_every_autotuned_config():
    # UltraViCo's damping (USE_DIST) on sm_90: it was changed without a GPU to run it on (2026-12-03)
    rows = compile_rows([c.label() for c in ts.HOPPER_CONFIGS[128]], 128, "dist")
    assert rows and all("error" not in r and r["wgmma"] > 0 and r["use_dist"] for r in rows), rows
