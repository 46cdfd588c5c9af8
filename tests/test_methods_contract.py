"""What every registered method must do; parametrised over the registry, so a new method is tested
without editing this file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from sparsevdit import TokenLayout, patterns, sparse_attention
from sparsevdit.methods import (
    Method,
    MethodError,
    MethodParams,
    build_for,
    get_method,
    list_methods,
    param_names,
    parse_params,
    register_method,
    unregister_method,
)
from sparsevdit.patterns import BlockPattern

LAYOUTS = [
    (TokenLayout(4, 4, 8), 16),
    (TokenLayout(3, 4, 6, text_tokens=5, text_position="prefix"), 8),
    (TokenLayout(5, 3, 5, text_tokens=7, text_position="suffix"), 16),
    (TokenLayout(2, 8, 8), 128),  # one partial block
]
METHODS = list_methods("static")  # masks from the layout; the dynamic ones have their own contract below
DYNAMIC = list_methods("dynamic")


def _pattern(name, layout, block_size, params=None, **where) -> BlockPattern:
    where = {"layer": 0, "head": 0, "step": 0, **where}
    p = build_for(name, layout, block_size, params, **where)
    return p if p is not None else patterns.build("dense", layout, block_size=block_size)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("layout,block_size", LAYOUTS)
def test_builds_a_valid_pattern(name, layout, block_size):
    p = build_for(name, layout, block_size, {}, layer=0, head=0, step=0)
    assert p is None or isinstance(p, BlockPattern)
    if p is not None:
        assert (p.layout, p.block_size) == (layout, block_size)
        assert 0 < p.density <= 1


@pytest.mark.parametrize("name", METHODS)
def test_dense_steps_and_layers(name):
    layout, block_size = LAYOUTS[0]
    params = {"dense_steps": 2, "dense_layers": [1, 3]}
    assert build_for(name, layout, block_size, params, layer=0, head=0, step=0) is None
    assert build_for(name, layout, block_size, params, layer=0, head=0, step=1) is None
    assert build_for(name, layout, block_size, params, layer=1, head=0, step=5) is None
    assert build_for(name, layout, block_size, params, layer=3, head=2, step=5) is None
    sparse = build_for(name, layout, block_size, params, layer=2, head=0, step=2)
    assert sparse == build_for(name, layout, block_size, {}, layer=2, head=0, step=2)


@pytest.mark.parametrize("name", METHODS + DYNAMIC)
def test_unknown_params_name_the_allowed_ones(name):
    with pytest.raises(MethodError) as info:
        parse_params(name, {"no_such_param": 1})
    message = str(info.value)
    assert "no_such_param" in message
    for allowed in param_names(name):
        assert allowed in message


@pytest.mark.parametrize("name", METHODS + DYNAMIC)
def test_params_are_frozen_and_round_trip(name):
    p = parse_params(name, {})
    assert dataclasses.is_dataclass(p) and isinstance(p, MethodParams)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.dense_steps = 3  # type: ignore[misc]
    assert parse_params(name, p.to_dict()) == p
    assert parse_params(name, p) is p


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("layout,block_size", LAYOUTS[:3])
def test_runs_on_the_kernels(name, layout, block_size):
    torch.manual_seed(0)
    heads, n = 2, layout.num_tokens
    q, k, v = (torch.randn(1, heads, n, 8) for _ in range(3))
    pats = [_pattern(name, layout, block_size, head=h) for h in range(heads)]
    ref = sparse_attention(q, k, v, pats, layout=layout, backend="reference")
    blockwise = sparse_attention(q, k, v, pats, layout=layout, backend="blockwise")
    torch.testing.assert_close(blockwise, ref, atol=1e-5, rtol=1e-5)


def test_registry():
    assert "radial" in list_methods()
    with pytest.raises(MethodError, match="available: .*radial"):
        get_method("nope")

    @dataclass(frozen=True, kw_only=True)
    class EveryOtherParams(MethodParams):
        method: ClassVar[str] = "test_every_other"

    class EveryOther(Method):
        name = "test_every_other"
        Params = EveryOtherParams

        @staticmethod
        def build(layout, block_size, params, *, layer, head, step):
            return None if head % 2 else patterns.build("diagonal", layout, block_size=block_size)

        @classmethod
        def full_params(cls, layout):
            return {}

    try:
        register_method(EveryOther)
        register_method(EveryOther)  # the same class again is fine
        assert build_for("test_every_other", *LAYOUTS[0], layer=0, head=1, step=0) is None
        with pytest.raises(MethodError, match="already registered"):
            register_method(type("Other", (EveryOther,), {}))
        register_method(type("Other", (EveryOther,), {}), override=True)
    finally:
        unregister_method("test_every_other")
    with pytest.raises(MethodError, match="Params"):
        register_method(type("NoParams", (Method,), {"name": "x", "Params": dict}))
    with pytest.raises(MethodError, match="no build of its own"):
        register_method(type("NoBuild", (Method,), {"name": "test_no_build", "full_params": classmethod(lambda c, l: {})}))
    with pytest.raises(MethodError, match="no full_params"):
        register_method(type("NoFull", (EveryOther,), {"name": "test_no_full", "full_params": Method.full_params}))
    assert "test_no_build" not in list_methods()
    with pytest.raises(MethodError, match="radial.*takes RadialParams"):
        parse_params("radial", EveryOtherParams())


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("layout,block_size", LAYOUTS)
def test_full_params_keep_every_pair(name, layout, block_size):
    full = get_method(name).full_params(layout)
    for where in ({"layer": 0, "head": 0, "step": 0}, {"layer": 3, "head": 1, "step": 7}):
        p = build_for(name, layout, block_size, full, **where)
        assert p is None or bool(p.token_mask().all()), p


@pytest.mark.parametrize("name", DYNAMIC)
@pytest.mark.parametrize("layout,block_size", LAYOUTS)
def test_a_dynamic_method_selects_kernel_ready_index_data_on_the_inputs_device(name, layout, block_size):
    from sparsevdit.methods.dynamic import DynamicPatterns, patterns_from_index

    cls = get_method(name)
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, layout.num_tokens, 8, generator=g) for _ in range(2))
    v = torch.randn(2, 3, layout.num_tokens, 8, generator=g)
    for params in ({}, cls.full_params(layout)):
        chosen = cls.select(q, k, layout, block_size, parse_params(name, params), v=v, layer=1, step=2)
        if not isinstance(chosen, tuple):  # one BlockPattern per head
            assert len(chosen) == 3 and all(isinstance(p, BlockPattern) and p.layout == layout for p in chosen)
            full = chosen
            continue
        counts, indices = chosen
        nb = patterns.num_blocks(layout.num_tokens, block_size)
        assert counts.dtype == indices.dtype == torch.int32 and counts.shape == (3, nb) and indices.shape == (3, nb, nb)
        assert counts.device == q.device and bool((counts >= 1).all())
        listed = torch.arange(nb)[None, None, :] < counts[..., None]
        assert bool((indices[~listed] == -1).all()) and bool((indices[listed] >= 0).all())
        assert all(bool((row[: int(c)].diff() > 0).all()) for hc, hi in zip(counts, indices) for c, row in zip(hc, hi))
        full = patterns_from_index(counts, indices, layout, block_size)  # (the last one: full_params')
    assert all(p.is_dense for p in full)
    with pytest.raises(MethodError, match="is dynamic"):
        build_for(name, layout, block_size, layer=0, head=0, step=0)
    dyn = DynamicPatterns(name, {"dense_steps": 2, "dense_layers": [1]}, block_size)
    assert dyn.patterns_for(0, 1, q, k, layout, v=v) is None and dyn.patterns_for(1, 5, q, k, layout, v=v) is None
    assert dyn.patterns_for(0, 2, q, k, layout, v=v) is not None and dyn.selections == 1
