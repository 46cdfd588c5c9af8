"""``sparsevdit.apply(model, method=...)`` on every integrated model (bundled and tiny random Wan,
CogVideoX, HunyuanVideo on CPU), for every registered method: the fast backends equal the reference
backend with the same masks, the method's full-density parameters reproduce the model's own output, and
``remove`` restores it. Parametrised over the method registry."""

from __future__ import annotations

import pytest
import torch

import sparsevdit as sv
from sparsevdit.methods import MethodError, get_method, list_methods
from sparsevdit.models.data import CLASSES
from sparsevdit.models.vdit import SamplerConfig, VDiTConfig, VideoDiT, sample
from sparsevdit.plan import MethodPlans, PlanError, SparsityPlan

BS = 16
METHODS = list_methods()
# Parameters that leave the tiny layouts' masks sparse (the defaults are sized for full-size videos);
# a method not listed here runs with its defaults.
SPARSE = {
    "radial": {},  # 4 frames of 64 tokens: frame pairs 2-3 apart are thinned away (frame 0 stays a sink)
    "sliding_tile": {"tile": [1, 4, 4], "window": [3, 1, 1]},
    "topk": {"tau": 0.5},  # dynamic: the fewest pooled key blocks holding half the softmax mass
    "svg": {"sparsity": 0.3, "model_family": "hunyuan"},  # the band rounds to 128 tokens: floor keeps it thin here
}
TEXT = VDiTConfig(dim=64, depth=2, heads=2, num_classes=len(CLASSES), frames=4, height=32, width=32,
                  text_in_attention=True)


class Bundled:
    name = "bundled"

    def __init__(self):
        torch.manual_seed(0)
        self.model = VideoDiT(TEXT)
        for p in self.model.parameters():  # leave adaLN-zero's zeros behind so outputs depend on attention
            torch.nn.init.normal_(p, std=0.05)
        self.model.eval()
        self.layout = TEXT.layout(4, 32, 32)

    def run(self):
        return sample(self.model, torch.tensor([0, 1]), frames=4, height=32, width=32, seeds=[1, 2],
                      sampler=SamplerConfig(steps=3))


class Diffusers:
    def __init__(self, name):
        import test_diffusers as td

        self.name, self.case = name, td.FACTORIES[name]()
        self.model, self.layout = self.case.model, self.case.layout

    def run(self):
        return self.case.run()


def _models():
    yield "bundled"
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return
    yield from ("wan", "cogvideox", "hunyuan")


@pytest.fixture(scope="module", params=list(_models()))
def subject(request):
    s = Bundled() if request.param == "bundled" else Diffusers(request.param)
    s.dense = s.run()
    return s


@pytest.fixture(autouse=True)
def _clean(request):
    yield
    if "subject" in request.fixturenames:
        sv.remove(request.getfixturevalue("subject").model)


@pytest.mark.parametrize("method", METHODS)
def test_method_backends_equal_reference_and_remove_restores(subject, method):
    params = SPARSE.get(method, {})
    if get_method(method).is_dynamic():  # masks from the run's q and k: identical on every backend
        sparse = True
    else:
        sparse = _static_is_sparse(subject, method, params)
    outs = {}
    for backend in ("reference", "auto", "blockwise"):
        assert sv.apply(subject.model, method=method, block_size=BS, backend=backend, **params) is subject.model
        outs[backend] = subject.run()
    for backend in ("auto", "blockwise"):
        torch.testing.assert_close(outs[backend], outs["reference"], atol=2e-5, rtol=2e-5)
    if sparse:
        assert (outs["reference"] - subject.dense).abs().max() > 1e-4
    sv.remove(subject.model)
    assert torch.equal(subject.run(), subject.dense)


def _static_is_sparse(subject, method, params):
    masks = SparsityPlan.for_method(sv.integrations.model_signature(subject.model) if subject.name == "bundled"
                                    else _diffusers_signature(subject.model), subject.layout, method, params,
                                    block_size=BS)
    return any(p is not None and not bool(p.token_mask().all())
               for layer in range(masks.model.num_layers) for p in (masks.patterns_for(layer, 0) or [None]))


@pytest.mark.parametrize("method", METHODS)
def test_full_density_params_reproduce_the_model(subject, method):
    sv.apply(subject.model, method=method, block_size=BS, **get_method(method).full_params(subject.layout))
    torch.testing.assert_close(subject.run(), subject.dense, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("reuse_every", [1, 2])
def test_a_dynamic_method_selects_once_per_layer_and_step_and_replays_through_reference(reuse_every):
    """Record every selection the run makes; the same patterns replayed through the reference backend
    as a static plan give the same video, and each selection equals select() on that call's q and k."""
    from sparsevdit.methods.dynamic import as_patterns
    from sparsevdit.methods.topk import TopKParams, select

    s = Bundled()
    calls = []  # (layer, step, q, k)
    for layer, attn in enumerate(s.model.attention_modules()):
        attn.capture = (lambda layer: lambda q, k, v: calls.append((layer, q.clone(), k.clone())))(layer)
    sv.apply(s.model, method="topk", block_size=BS, backend="blockwise", tau=0.5, reuse_every=reuse_every)
    dyn = s.model._sparsevdit_plan_state.methods.dynamic
    chosen = {}
    original = dyn.patterns_for

    def recording(layer, step, q, k, layout, v=None):
        pats = original(layer, step, q, k, layout, v=v)
        chosen[(layer, step)] = as_patterns(pats)  # a topk selection is a device BlockSelection
        return pats

    dyn.patterns_for = recording
    video = s.run()  # 3 steps, 2 layers
    assert dyn.selections == 2 * len(range(0, 3, reuse_every))
    sv.remove(s.model)
    # replay: the recorded patterns set step by step, through the reference backend
    steps = {}
    for (layer, step), pats in chosen.items():
        steps.setdefault(step, []).append((layer, pats))
    def per_step(step):
        return [dict(steps[step])[layer] for layer in range(2)]

    replay = sample(s.model, torch.tensor([0, 1]), frames=4, height=32, width=32, seeds=[1, 2],
                    sampler=SamplerConfig(steps=3), on_step=lambda i: s.model.set_patterns(per_step(i), backend="reference"))
    torch.testing.assert_close(replay, video, atol=1e-4, rtol=1e-4)
    # the first selection of layer 0 is the rule on the q and k that call saw
    counts, indices = select(calls[0][1], calls[0][2], s.layout, BS, TopKParams(tau=0.5))
    first = chosen[(0, 0)]
    for h, p in enumerate(first):
        assert torch.equal(p.kv_counts.int(), counts[h].cpu().int())


def test_dense_steps_run_the_models_own_attention_first(subject):
    plans = MethodPlans(_signature(subject), "radial", {"dense_steps": 1}, block_size=BS)
    plan = plans.for_layout(subject.layout)
    assert all(plan.patterns_for(layer, 0) is None for layer in range(plan.model.num_layers))
    assert all(plan.patterns_for(layer, 1) is not None for layer in range(plan.model.num_layers))
    assert plans.for_layout(subject.layout) is plan  # one plan per layout, kept


def test_bad_method_arguments_are_refused_before_any_forward(subject):
    model = subject.model
    with pytest.raises(MethodError, match="unknown method 'nope'; available: .*radial"):
        sv.apply(model, method="nope")
    with pytest.raises(MethodError, match="no parameter windw; its parameters: .*window"):
        sv.apply(model, method="sliding_tile", windw=[1, 1, 1])
    with pytest.raises(MethodError, match="decay_factor must be a finite number > 0"):
        sv.apply(model, method="radial", decay_factor=-1)
    with pytest.raises(TypeError, match="a plan or a method=NAME"):
        sv.apply(model)
    plan = SparsityPlan.for_method(_signature(subject), subject.layout, "radial", block_size=BS)
    with pytest.raises(TypeError, match="exactly one"):
        sv.apply(model, plan, method="radial")
    with pytest.raises(TypeError, match="dense_steps belong to a method"):
        sv.apply(model, plan, dense_steps=3)
    with pytest.raises(MethodError, match="block_size must be an integer"):
        sv.apply(model, method="radial", block_size=0)
    assert not _applied(model)


def test_method_plan_refuses_another_model(subject):
    other = sv.ModelSignature("Other", 1, 1, 8)
    with pytest.raises(PlanError, match="model.class_name"):
        (sv.integrations.apply_bundled if subject.name == "bundled" else _diffusers().apply_diffusers)(
            subject.model, MethodPlans(other, "radial", block_size=BS))


def _diffusers():
    from sparsevdit.integrations import diffusers

    return diffusers


def _diffusers_signature(model):
    return _diffusers().model_signature(model)


def _signature(subject):
    return sv.integrations.model_signature(subject.model) if subject.name == "bundled" else _diffusers_signature(subject.model)


def _applied(model):
    return sv.integrations.is_applied(model) if isinstance(model, VideoDiT) else _diffusers().is_applied(model)


# UltraViCo on top of dense attention or a method ------------------------------------------------------
def test_ultravico_identity_damping_reproduces_the_model(subject):
    sv.apply(subject.model, ultravico={"train_frames": 2, "alpha": 1.0, "bar_first_frame": False}, block_size=BS)
    torch.testing.assert_close(subject.run(), subject.dense, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("method", [None, "radial"])
def test_ultravico_damps_and_its_backends_agree(subject, method):
    from sparsevdit.methods import UltraViCo

    uv = UltraViCo(train_frames=2, alpha=0.3)  # 4 frames: pairs over one frame apart are damped
    kwargs = {"method": method} if method else {}
    outs = {}
    for backend in ("reference", "blockwise", "auto"):
        sv.apply(subject.model, ultravico=uv, block_size=BS, backend=backend, **kwargs)
        outs[backend] = subject.run()
    for backend in ("blockwise", "auto"):
        torch.testing.assert_close(outs[backend], outs["reference"], atol=2e-5, rtol=2e-5)
    assert (outs["reference"] - subject.dense).abs().max() > 1e-4
    sv.remove(subject.model)
    assert torch.equal(subject.run(), subject.dense)


def test_ultravico_is_checked():
    from sparsevdit.methods import UltraViCo

    model = Bundled().model
    for bad, match in (({"alpha": 0.5}, "train_frames \\(required\\)"), ({"train_frames": 0}, "train_frames must be"),
                       ({"train_frames": 4, "alpha": 2}, "alpha must be"), ({"train_frames": 4, "beta": 1}, "beta"),
                       ([4], "a dict of its fields")):
        with pytest.raises(MethodError, match=match):
            sv.apply(model, ultravico=bad)
    assert UltraViCo(16).damping_for(TEXT.layout(32, 32, 32)).window == 16 * 64 // 2


def test_ultravico_with_padded_text_keys_is_refused():
    pytest.importorskip("diffusers")
    import test_diffusers as td

    case = td._hunyuan(valid=(10, 24))
    sv.apply(case.model, ultravico={"train_frames": 2}, block_size=BS, backend="reference")
    try:
        with pytest.raises(ValueError, match="padded text keys"):
            case.run()
    finally:
        sv.remove(case.model)


def test_a_dynamic_method_cannot_be_a_plan_head():
    from sparsevdit.plan import HeadSpec, LayerEntry

    s = Bundled()
    with pytest.raises(PlanError, match="a static method: a dynamic one"):
        SparsityPlan(_signature(s), s.layout, BS, [LayerEntry(0, (HeadSpec.of_method("topk"),) * 2)])


def _dynamic(model):
    """The DynamicPatterns a dynamic method's apply installed."""
    if isinstance(model, VideoDiT):
        return model._sparsevdit_plan_state.methods.dynamic
    from sparsevdit.integrations.diffusers import _state

    return _state(model).methods.dynamic


@pytest.mark.parametrize("method", list_methods("dynamic"))
def test_every_models_dynamic_selections_replay_through_reference_and_follow_the_rule(subject, method):
    """Run 1 (auto backend) records each select call's inputs and result; run 2 feeds the same
    selections, in the same order, to the reference backend: the outputs are equal. The first
    selection of the run equals a plain reference of the method's rule on that call's q, k, v."""
    import types

    from sparsevdit.methods.dynamic import as_patterns
    from sparsevdit.methods.svg import masks

    params = SPARSE.get(method, {})
    sv.apply(subject.model, method=method, block_size=BS, backend="auto", **params)
    dyn = _dynamic(subject.model)
    cls, recorded = dyn.cls, []

    def recording(q, k, layout, block_size, p, **kw):
        out = cls.select(q, k, layout, block_size, p, **kw)
        recorded.append((q.clone(), k.clone(), kw["v"].clone(), kw["layer"], kw["step"], out))
        return out

    dyn.cls = types.SimpleNamespace(name=cls.name, select=recording)
    video = subject.run()
    sv.remove(subject.model)
    assert recorded and dyn.selections == len(recorded)
    ran = [as_patterns(x) for x in dyn.history if x is not None]
    assert ran and all(len(x) == len(ran[0]) for x in ran)  # one pattern per head at every sparse call

    replayed = iter([out for *_, out in recorded])
    sv.apply(subject.model, method=method, block_size=BS, backend="reference", **params)
    _dynamic(subject.model).cls = types.SimpleNamespace(name=cls.name, select=lambda *a, **kw: next(replayed))
    again = subject.run()
    sv.remove(subject.model)
    assert next(replayed, None) is None  # every recorded selection was used, in order
    torch.testing.assert_close(again, video, atol=2e-5, rtol=2e-5)
    assert (video - subject.dense).abs().max() > 1e-4  # the selections changed the output

    q, k, v, layer, step, first = recorded[0]
    p = dyn.params
    if method == "topk":
        from test_methods_topk import reference as topk_rule

        counts, indices = first
        expected = topk_rule(q, k, subject.layout, BS, p)
        got = [[indices[h, i, : counts[h, i]].tolist() for i in range(counts.shape[1])] for h in range(counts.shape[0])]
        assert got == expected
    elif method == "svg":
        from test_methods_svg import choice_rule

        pair = masks(subject.layout, BS, p)
        assert [pair.index(c) for c in first] == choice_rule(q, k, v, subject.layout, BS, p, layer, step)
    else:
        pytest.fail(f"no plain reference of {method}'s rule in this test: add one")


def test_topk_regions_apply_on_every_model(subject):
    """topk with DraftAttention regions of one block (tile-major order) on the integrated models: auto
    equals reference, and the output is sparse."""
    outs = {}
    for backend in ("reference", "auto"):
        sv.apply(subject.model, method="topk", block_size=BS, backend=backend, tau=None, fraction=0.3, region=[1, 4, 4])
        outs[backend] = subject.run()
        sv.remove(subject.model)
    torch.testing.assert_close(outs["auto"], outs["reference"], atol=2e-5, rtol=2e-5)
    assert (outs["reference"] - subject.dense).abs().max() > 1e-4
