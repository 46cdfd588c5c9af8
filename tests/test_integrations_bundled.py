"""sparsevdit.integrations on the bundled VideoDiT: apply / remove, step ranges, refusals."""

import pytest
import torch

from sparsevdit import patterns as P
from sparsevdit.integrations import apply, is_applied, model_signature, plan_patterns, remove, set_step, step_history
from sparsevdit.models.data import CLASSES
from sparsevdit.models.vdit import SamplerConfig, VDiTConfig, VideoDiT, sample
from sparsevdit.plan import HeadSpec, LayerEntry, ModelSignature, PlanError, SparsityPlan

TINY = VDiTConfig(dim=64, depth=2, heads=2, num_classes=len(CLASSES), frames=4, height=32, width=32)
BS = 32


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = VideoDiT(TINY)
    for p in model.parameters():  # leave adaLN-zero's zeros behind so outputs depend on attention
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def run(model, steps=3, seeds=(1, 2)):
    return sample(model, torch.tensor([0, 1][: len(seeds)]), frames=4, height=32, width=32, seeds=list(seeds),
                  sampler=SamplerConfig(steps=steps))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def layout():
    return TINY.layout(4, 32, 32)


def sparse_plan(model, layout):
    heads = (HeadSpec("diagonal", {"width": 64}), HeadSpec("multi_diagonal", {"width": 64}))
    heads1 = (HeadSpec("skip"), HeadSpec("union", {"patterns": [
        {"name": "diagonal", "params": {"width": 32}}, {"name": "vertical_stripe", "params": {"sink_frames": 1}}]}))
    return SparsityPlan(model_signature(model), layout, BS, [LayerEntry(0, heads), LayerEntry(1, heads1)])


def test_signature(model):
    assert model_signature(model) == ModelSignature("VideoDiT", 2, 2, 32)


def test_all_dense_plan_equals_no_plan(model, layout):
    base = run(model)
    plan = SparsityPlan.uniform(model_signature(model), layout, "dense", block_size=BS)
    apply(model, plan)
    try:
        torch.testing.assert_close(run(model), base, atol=1e-5, rtol=1e-5)
    finally:
        remove(model)


def test_sparse_plan_equals_reference_backend_and_remove_restores(model, layout):
    base = run(model)
    plan = sparse_plan(model, layout)
    apply(model, plan)
    fast = run(model)
    assert is_applied(model)
    apply(model, plan, backend="reference")  # re-applying replaces the installed plan
    ref = run(model)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    assert (fast - base).abs().max() > 1e-3  # the plan changes the output
    assert len(model._forward_pre_hooks) == 1
    remove(model)
    assert not is_applied(model) and len(model._forward_pre_hooks) == 0
    assert all(a.patterns is None for a in model.attention_modules())
    torch.testing.assert_close(run(model), base)
    remove(model)  # removing twice is harmless


def test_apply_accepts_a_plan_file(model, layout, tmp_path):
    plan = sparse_plan(model, layout)
    path = plan.save(tmp_path / "plan.json")
    apply(model, str(path))
    try:
        a = run(model)
    finally:
        remove(model)
    apply(model, plan)
    try:
        torch.testing.assert_close(run(model), a)
    finally:
        remove(model)


@pytest.mark.parametrize("change, field", [
    (dict(class_name="WanTransformer3DModel"), "model.class_name"),
    (dict(num_heads=3), "model.num_heads"),
    (dict(num_layers=4), "model.num_layers"),
    (dict(head_dim=16), "model.head_dim"),
])
def test_plan_for_another_model_is_refused(model, layout, change, field):
    sig = {**model_signature(model).to_dict(), **change}
    plan = SparsityPlan.uniform(ModelSignature(**sig), layout, "dense", block_size=BS)
    with pytest.raises(PlanError, match=field):
        apply(model, plan)
    assert not is_applied(model)


def test_layout_mismatch_names_both_layouts(model):
    other = TINY.layout(4, 16, 16)
    plan = SparsityPlan.uniform(model_signature(model), other, "diagonal", {"width": 16}, block_size=16)
    apply(model, plan)
    try:
        with pytest.raises(PlanError) as info:
            run(model)
    finally:
        remove(model)
    msg = str(info.value)
    assert str(other) in msg and str(TINY.layout(4, 32, 32)) in msg
    assert "--height 16" in msg


def test_step_ranges_are_applied_at_the_right_steps(model, layout):
    sig = model_signature(model)
    diag, multi, skip = HeadSpec("diagonal", {"width": 64}), HeadSpec("multi_diagonal", {"width": 64}), HeadSpec("skip")
    plan = SparsityPlan(sig, layout, BS, [
        LayerEntry(0, (diag, diag), 0, 2), LayerEntry(0, (multi, multi), 2, None), LayerEntry(1, (skip, diag), 1, 3),
    ])
    seen = []
    for i, attn in enumerate(model.attention_modules()):
        attn.capture = (lambda i, attn: (lambda q, k, v: seen.append((i, None if attn.patterns is None else attn.patterns[0].name))))(i, attn)
    apply(model, plan)
    try:
        run(model, steps=4)
        first = step_history(model)
        run(model, steps=4)  # a new sampling run starts at step 0 again
    finally:
        remove(model)
        for attn in model.attention_modules():
            attn.capture = None
    assert first == [0, 1, 2, 3] and step_history(model) == []
    expected = [(0, "diagonal"), (1, None), (0, "diagonal"), (1, "skip"), (0, "multi_diagonal"), (1, "skip"),
                (0, "multi_diagonal"), (1, None)]
    assert seen == expected + expected


def test_set_step_pins_the_step(model, layout):
    sig = model_signature(model)
    plan = SparsityPlan(sig, layout, BS, [LayerEntry(0, (HeadSpec("skip"), HeadSpec("skip")), 5, None)])
    apply(model, plan)
    try:
        set_step(model, 5)
        x = torch.randn(1, 3, 4, 32, 32)
        model(x, torch.tensor([0.5]), torch.tensor([0]))
        assert model.attention_modules()[0].patterns[0].is_empty
        set_step(model, None)
        model(x, torch.tensor([0.9]), torch.tensor([0]))
        assert model.attention_modules()[0].patterns is None
    finally:
        remove(model)
    with pytest.raises(RuntimeError, match="no plan is installed"):
        set_step(model, 0)


def test_plan_patterns(model, layout):
    plan = sparse_plan(model, layout)
    pats = plan_patterns(plan, model, layout, 0)
    assert len(pats) == 2 and [p.name for p in pats[0]] == ["diagonal", "multi_diagonal"]
    assert pats[1][0].is_empty
    with pytest.raises(PlanError, match="layout"):
        plan_patterns(plan, model, TINY.layout(2, 32, 32), 0)


def test_unsupported_objects_are_refused(layout):
    with pytest.raises(TypeError, match="cannot apply a plan"):
        apply(torch.nn.Linear(2, 2), SparsityPlan.uniform(ModelSignature("VideoDiT", 2, 2, 32), layout, "dense", block_size=BS))
    with pytest.raises(TypeError, match="cannot remove"):
        remove(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="SparsityPlan or the path"):
        apply(tiny_model(), 42)
