"""The Hopper kernel compiles for sm_90 on any machine (Triton's compiler and ptxas need no GPU).

Guards what the GPU runs but CI cannot: the autotuned configs and the warp-specialised config build,
use wgmma, and the default config does not spill (a pointer-load tail loop once cost 1.3 KB a thread).
"""

import os
import sys

import pytest

from sparsevdit.kernels import triton_sparse as ts

pytestmark = pytest.mark.skipif(not ts.HAS_TRITON or ts.interpret_mode(),
                                reason="needs triton, compiled mode (TRITON_INTERPRET unset)")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))


@pytest.fixture(scope="module")
def compile_check():
    import compile_check

    return compile_check


@pytest.mark.parametrize("head_dim", [64, 128])
def test_autotuned_configs_compile(compile_check, head_dim):
    for cfg in ts.HOPPER_CONFIGS[head_dim]:
        for even_n in (False, True):
            row = compile_check.compile_config(cfg, head_dim, even_n=even_n)
            assert "error" not in row, row
            assert row["wgmma"] > 0, row


def test_default_config_does_not_spill(compile_check):
    row = compile_check.compile_config(ts.HOPPER_CONFIGS[128][0], 128, even_n=False, store_lse=True)
    if "stack_bytes" not in row:
        pytest.skip("cuobjdump not found beside ptxas")
    assert row["stack_bytes"] <= 128, row


@pytest.mark.parametrize("permuted", [False, True])
def test_warp_specialised_config_compiles(compile_check, permuted):
    cfg = ts.KernelConfig(128, 64, 4, 2, warp_spec=True, host_desc=False)
    row = compile_check.compile_config(cfg, 128, even_n=False, permuted=permuted)
    assert "error" not in row, row
    # specialised: producer + two consumer warpgroups with register reallocation; permuted Q: plain loop
    assert (row["setmaxnreg"] > 0) == (not permuted), row
