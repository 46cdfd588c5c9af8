"""Sparse plans and dynamic methods under diffusers' context parallelism (Ulysses), on CPU with two gloo
processes and a tiny Wan: the same output as one process, and the slicing of the plan by rank matters."""

from __future__ import annotations

import os
import socket

import pytest
import torch

pytest.importorskip("diffusers")

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                                  rope_max_seq_len=32).eval()
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(1, 4, 4, 16, 16, generator=g), torch.tensor([900.0]), torch.randn(1, 8, 16, generator=g))
    return model, inputs


def _plan(model, inputs, swap: bool = False):
    """Different patterns per head (so a rank running another rank's heads would differ); ``swap``: every
    rank's slice made of rank 0's heads (what running the plan unsliced on every rank computes)."""
    import sparsevdit as sv
    from sparsevdit.integrations.diffusers import model_signature, runtime_layout
    from sparsevdit.plan import HeadSpec, LayerEntry, SparsityPlan

    sig, layout = model_signature(model), runtime_layout(model, *inputs)
    heads = [HeadSpec("diagonal", {"width": 32}), HeadSpec("multi_diagonal", {"width": 32}),
             HeadSpec("vertical_stripe", {"sink_frames": 1}), HeadSpec("diagonal", {"width": 96})]
    if swap:
        heads = heads[:2] * 2
    entries = [LayerEntry(layer, tuple(heads)) for layer in range(sig.num_layers)]
    del sv
    return SparsityPlan(sig, layout, 16, entries)


def _run(model, inputs):
    with torch.no_grad():
        return model(*inputs, return_dict=False)[0]


def _worker(rank: int, port: int, results: dict):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    # diffusers places a rank on device rank % device_count(): a CPU counts none
    torch.accelerator.device_count = lambda: 1
    try:
        import sparsevdit as sv
        from diffusers import ContextParallelConfig

        model, inputs = _model()
        plan = _plan(model, inputs)
        single = {}
        sv.apply(model, plan, backend="reference")
        single["plan"] = _run(model, inputs)
        sv.remove(model)
        sv.apply(model, _plan(model, inputs, swap=True), backend="reference")
        single["unsliced"] = _run(model, inputs)
        sv.remove(model)
        sv.apply(model, method="topk", block_size=16, backend="reference", tau=None, fraction=0.3)
        single["topk"] = _run(model, inputs)
        sv.remove(model)

        from sparsevdit.integrations import context_parallel

        calls = []
        original = context_parallel.ulysses_attend

        def counted(proc, q, *args, **kwargs):
            calls.append(q.shape[2])  # this rank's tokens
            return original(proc, q, *args, **kwargs)

        context_parallel.ulysses_attend = counted
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD))
        parallel = {}
        sv.apply(model, plan, backend="reference")
        parallel["plan"] = _run(model, inputs)
        sv.remove(model)
        sv.apply(model, method="topk", block_size=16, backend="reference", tau=None, fraction=0.3)
        parallel["topk"] = _run(model, inputs)
        sv.remove(model)
        dense = _run(model, inputs)
        out = {k: v.clone() for k, v in {**{f"single_{k}": v for k, v in single.items()},
                                         **{f"parallel_{k}": v for k, v in parallel.items()}, "dense": dense}.items()}
        results[rank] = {**out, "ulysses_tokens": list(calls)}
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results():
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        shared = manager.dict()
        mp.spawn(_worker, args=(_free_port(), shared), nprocs=WORLD)
        return {r: dict(v) for r, v in shared.items()}


def test_ulysses_with_a_plan_equals_one_process(results):
    for rank in range(WORLD):
        r = results[rank]
        # both layers of both parallel runs went through the Ulysses op, this rank holding 128 of the 256 tokens
        assert r["ulysses_tokens"] == [128] * 4
        torch.testing.assert_close(r["parallel_plan"], r["single_plan"], atol=1e-5, rtol=1e-5)
        # the test can fail: every rank running the plan's first heads (no slicing) gives another output
        assert (r["single_unsliced"] - r["single_plan"]).abs().max() > 1e-3
        assert (r["single_plan"] - r["dense"]).abs().max() > 1e-3  # the plan is sparse


def test_a_dynamic_method_under_ulysses_equals_one_process(results):
    for rank in range(WORLD):
        torch.testing.assert_close(results[rank]["parallel_topk"], results[rank]["single_topk"], atol=1e-5, rtol=1e-5)


def test_ring_attention_is_refused_naming_ulysses():
    from types import SimpleNamespace

    from sparsevdit.integrations.context_parallel import _check
    from sparsevdit.plan import PlanError

    with pytest.raises(PlanError, match="Ulysses"):
        _check(SimpleNamespace(ring_degree=2, ulysses_degree=1), 4)
    with pytest.raises(PlanError, match="divisor of the model's 4 heads"):
        _check(SimpleNamespace(ring_degree=1, ulysses_degree=3, ulysses_anything=False), 4)
    with pytest.raises(PlanError, match="whole heads"):
        _check(SimpleNamespace(ring_degree=1, ulysses_degree=2, ulysses_anything=True), 4)


def test_the_ulysses_bench_runs_on_two_cpu_processes(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "u.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", f"--master-port={_free_port()}",
           "-m", "sparsevdit.bench.ulysses", "--models", "tiny", "--device", "cpu", "--densities", "0.3", "--rep", "1",
           "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["row"], r["gpus"]) for r in rows] == [("dense", 1), ("plan 30%", 1), ("dense", 2), ("plan 30%", 2)]
    assert all(r["ms"] > 0 for r in rows) and "scaling" in rows[2]
