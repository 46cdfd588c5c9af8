"""Plans on diffusers' Wan / CogVideoX / HunyuanVideo transformers, on tiny random configs (CPU)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import pytest

pytest.importorskip("diffusers")

import torch  # noqa: E402
from diffusers import CogVideoXTransformer3DModel, HunyuanVideoTransformer3DModel, WanTransformer3DModel  # noqa: E402

import sparsevdit as sv  # noqa: E402
from sparsevdit import patterns as P  # noqa: E402
from sparsevdit.integrations.diffusers import (  # noqa: E402
    apply_diffusers,
    current_step,
    is_applied,
    is_diffusers_model,
    model_signature,
    remove_diffusers,
    reset_step,
    runtime_layout,
    sparse_attention_key_masked,
    step_history,
)
from sparsevdit.kernels import BackendError  # noqa: E402
from sparsevdit.plan import HeadSpec, LayerEntry, ModelSignature, PlanError, SparsityPlan  # noqa: E402

BS = 16  # block size for the tiny layouts (4 x 8 x 8 video tokens = 16 blocks)


@dataclass
class Case:
    name: str
    model: torch.nn.Module
    args: tuple
    kwargs: dict
    timestep_pos: int  # index of the timestep in args

    def run(self, t: float | None = None, **override) -> torch.Tensor:
        args = list(self.args)
        if t is not None:
            args[self.timestep_pos] = torch.full_like(args[self.timestep_pos], t)
        with torch.no_grad():
            return self.model(*args, **{**self.kwargs, **override}).sample

    @property
    def signature(self) -> ModelSignature:
        return model_signature(self.model)

    @property
    def layout(self) -> sv.TokenLayout:
        return runtime_layout(self.model, *self.args, **self.kwargs)


def _wan() -> Case:
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3, rope_max_seq_len=32,
    ).eval()
    x, text, t = torch.randn(1, 4, 4, 16, 16), torch.randn(1, 8, 16), torch.tensor([900.0])
    return Case("wan", model, (x, t, text), {}, 1)


def _cogvideox() -> Case:
    torch.manual_seed(0)
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
        text_embed_dim=16, num_layers=3, sample_width=16, sample_height=16, sample_frames=13, patch_size=2,
        max_text_seq_length=8, use_rotary_positional_embeddings=True,
    ).eval()
    x, text, t = torch.randn(1, 4, 4, 16, 16), torch.randn(1, 8, 16), torch.tensor([900.0])
    angles = torch.randn(4 * 8 * 8, 8)
    rope = (angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1))
    return Case("cogvideox", model, (x, text, t), {"image_rotary_emb": rope}, 2)


def _hunyuan(valid: tuple[int, ...] = (24, 24)) -> Case:
    torch.manual_seed(0)
    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=False,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6),
    ).eval()
    b = len(valid)
    x, text, pooled = torch.randn(b, 4, 4, 16, 16), torch.randn(b, 24, 16), torch.randn(b, 8)
    mask = torch.zeros(b, 24, dtype=torch.long)
    for i, n in enumerate(valid):
        mask[i, :n] = 1
    return Case("hunyuan", model, (x, torch.full((b,), 900.0), text, mask, pooled), {}, 1)


FACTORIES: dict[str, Callable[[], Case]] = {"wan": _wan, "cogvideox": _cogvideox, "hunyuan": _hunyuan}


@pytest.fixture(scope="module", params=list(FACTORIES))
def case(request) -> Case:
    c = FACTORIES[request.param]()
    c.reference = c.run()
    return c


@pytest.fixture(autouse=True)
def _clean(request):
    yield
    if "case" in request.fixturenames:
        remove_diffusers(request.getfixturevalue("case").model)


def sparse_plan(sig: ModelSignature, layout: sv.TokenLayout) -> SparsityPlan:
    """A mix of every mode: per-layer different heads, a step range, a dense layer, skip heads."""
    f = layout.tokens_per_frame
    heads = [
        (HeadSpec("diagonal", {"width": f}), HeadSpec("multi_diagonal", {"width": 2 * BS})),
        (HeadSpec("vertical_stripe", {"sink_frames": 1}), HeadSpec("skip")),
        (HeadSpec("union", {"patterns": [{"name": "diagonal", "params": {"width": f // 2}},
                                         {"name": "vertical_stripe", "params": {"sink_frames": 1}}]}),
         HeadSpec("dense")),
    ]
    entries = [LayerEntry(0, heads[0], 0, 2), LayerEntry(0, heads[2], 2, None), LayerEntry(1, heads[1])]
    # the last layer stays dense (no entry)
    return SparsityPlan(sig, layout, BS, entries)


def dense_plan(case: Case) -> SparsityPlan:
    return SparsityPlan.uniform(case.signature, case.layout, "dense", block_size=BS)


# ------------------------------------------------------------------------------------------------
# (a) an all-dense plan reproduces the original model
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "flex", "masked_sdpa"])
def test_dense_plan_reproduces_original(case, backend):
    apply_diffusers(case.model, dense_plan(case), backend=backend)
    out = case.run()
    torch.testing.assert_close(out, case.reference, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# (b) a sparse plan: flex and masked_sdpa equal the reference backend, and differ from dense
# ------------------------------------------------------------------------------------------------
def test_sparse_plan_backends_agree_and_differ_from_dense(case):
    plan = sparse_plan(case.signature, case.layout)
    outs = {}
    for backend in ("reference", "flex", "masked_sdpa"):
        apply_diffusers(case.model, plan, backend=backend)
        outs[backend] = case.run()
        remove_diffusers(case.model)
    for backend in ("flex", "masked_sdpa"):
        torch.testing.assert_close(outs[backend], outs["reference"], atol=1e-5, rtol=1e-5)
    assert (outs["reference"] - case.reference).abs().max() > 1e-3


def test_step_range_follows_timesteps(case):
    # Only layer 1 is sparse, and only at steps [1, 3): steps 0 and 3 reproduce the original.
    heads = (HeadSpec("diagonal", {"width": BS}), HeadSpec("skip"))
    plan = SparsityPlan(case.signature, case.layout, BS, [LayerEntry(1, heads, 1, 3)])
    apply_diffusers(case.model, plan, backend="reference")
    outs = [case.run(t) for t in (900.0, 900.0, 700.0, 500.0, 500.0, 300.0)]
    assert step_history(case.model) == [0, 0, 1, 2, 2, 3]
    torch.testing.assert_close(outs[0], case.reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1], outs[0])  # the CFG-style second call is the same step
    remove_diffusers(case.model)
    dense_at = {t: case.run(t) for t in (700.0, 300.0)}
    assert (outs[2] - dense_at[700.0]).abs().max() > 1e-3  # step 1: sparse
    torch.testing.assert_close(outs[5], dense_at[300.0], atol=1e-5, rtol=1e-5)  # step 3: dense again


# ------------------------------------------------------------------------------------------------
# (c) remove() restores the original output exactly and removes the hook
# ------------------------------------------------------------------------------------------------
def test_remove_restores(case):
    model = case.model
    originals = {name: proc for name, proc in model.attn_processors.items()}
    hooks_before = len(model._forward_pre_hooks)
    apply_diffusers(model, sparse_plan(case.signature, case.layout), backend="reference")
    assert is_applied(model)
    assert len(model._forward_pre_hooks) == hooks_before + 1
    changed = [n for n, p in model.attn_processors.items() if p is not originals[n]]
    assert len(changed) == case.signature.num_layers  # only the indexed self-attention layers
    case.run()
    assert remove_diffusers(model) is model
    assert not is_applied(model)
    assert len(model._forward_pre_hooks) == hooks_before
    assert all(p is originals[n] for n, p in model.attn_processors.items())
    assert torch.equal(case.run(), case.reference)
    remove_diffusers(model)  # a second remove is harmless


def test_apply_twice_replaces(case):
    apply_diffusers(case.model, sparse_plan(case.signature, case.layout), backend="reference")
    apply_diffusers(case.model, dense_plan(case), backend="reference")
    assert len(case.model._forward_pre_hooks) == 1
    torch.testing.assert_close(case.run(), case.reference, atol=1e-5, rtol=1e-5)
    remove_diffusers(case.model)
    assert torch.equal(case.run(), case.reference)


# ------------------------------------------------------------------------------------------------
# (d) a plan for another model or layout is refused
# ------------------------------------------------------------------------------------------------
def test_plan_for_another_model_is_refused(case):
    sig = case.signature
    others = [
        ModelSignature("SomeOtherTransformer", sig.num_layers, sig.num_heads, sig.head_dim),
        ModelSignature(sig.class_name, sig.num_layers + 1, sig.num_heads, sig.head_dim),
        ModelSignature(sig.class_name, sig.num_layers, sig.num_heads * 2, sig.head_dim),
        ModelSignature(sig.class_name, sig.num_layers, sig.num_heads, sig.head_dim * 2),
    ]
    for other in others:
        plan = SparsityPlan.uniform(other, case.layout, "dense", block_size=BS)
        with pytest.raises(PlanError, match=r"model\."):
            apply_diffusers(case.model, plan)
        assert not is_applied(case.model)


def test_plan_for_another_layout_is_refused(case):
    lay = case.layout
    other = sv.TokenLayout(lay.frames + 1, lay.height, lay.width, lay.text_tokens, lay.text_position)
    apply_diffusers(case.model, SparsityPlan.uniform(case.signature, other, "dense", block_size=BS))
    with pytest.raises(PlanError) as info:
        case.run()
    assert str(other) in str(info.value) and str(lay) in str(info.value)


def test_plan_for_other_model_class_refused_across_models():
    wan, cog = _wan(), _cogvideox()
    plan = SparsityPlan.uniform(wan.signature, wan.layout, "dense", block_size=BS)
    with pytest.raises(PlanError, match="WanTransformer3DModel"):
        apply_diffusers(cog.model, plan)


def test_signatures_and_layouts():
    wan, cog, hy = _wan(), _cogvideox(), _hunyuan()
    assert wan.signature == ModelSignature("WanTransformer3DModel", 3, 2, 16)
    assert wan.layout == sv.TokenLayout(4, 8, 8)
    assert cog.signature == ModelSignature("CogVideoXTransformer3DModel", 3, 2, 16)
    assert cog.layout == sv.TokenLayout(4, 8, 8, text_tokens=8, text_position="prefix")
    # 2 dual-stream + 2 single-stream blocks; text (padded length) after the video
    assert hy.signature == ModelSignature("HunyuanVideoTransformer3DModel", 4, 2, 16)
    assert hy.layout == sv.TokenLayout(4, 8, 8, text_tokens=24, text_position="suffix")


def test_not_a_supported_model():
    assert not is_diffusers_model(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="WanTransformer3DModel"):
        model_signature(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------------
# (e) the step hook advances on new timesteps only
# ------------------------------------------------------------------------------------------------
def test_step_hook_counts_new_timesteps_only():
    c = _wan()
    apply_diffusers(c.model, dense_plan(c), backend="reference")
    seen = []
    for t in (999.0, 999.0, 900.0, 900.0, 800.0):
        c.run(t)
        seen.append(current_step(c.model))
    assert seen == [0, 0, 1, 1, 2]
    reset_step(c.model)
    c.run(800.0)
    assert current_step(c.model) == 0
    c.run(700.0)
    assert current_step(c.model) == 1
    c.run(999.0)  # a larger timestep: a new generation starts at step 0
    assert current_step(c.model) == 0
    apply_diffusers(c.model, dense_plan(c), backend="reference", auto_reset=False)
    for t in (500.0, 400.0, 999.0):
        c.run(t)
    assert step_history(c.model) == [0, 1, 2]
    remove_diffusers(c.model)
    with pytest.raises(RuntimeError, match="no sparsevdit plan"):
        current_step(c.model)


def test_pipeline_object_accepted():
    c = _wan()
    pipe = SimpleNamespace(transformer=c.model)
    assert is_diffusers_model(pipe) and is_diffusers_model(c.model)
    assert model_signature(pipe) == c.signature
    reference = c.run()
    apply_diffusers(pipe, sparse_plan(c.signature, c.layout), backend="reference")
    assert is_applied(c.model)
    assert (c.run() - reference).abs().max() > 1e-3
    reset_step(pipe)
    remove_diffusers(pipe)
    assert torch.equal(c.run(), reference)


def test_generic_apply_dispatches_to_diffusers():
    integrations = pytest.importorskip("sparsevdit.integrations")
    c = _wan()
    reference = c.run()
    integrations.apply(c.model, sparse_plan(c.signature, c.layout), backend="reference")
    assert is_applied(c.model)
    integrations.remove(c.model)
    assert torch.equal(c.run(), reference)


# ------------------------------------------------------------------------------------------------
# (f) HunyuanVideo text padding is respected
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def padded() -> Case:
    c = _hunyuan(valid=(17, 9))  # two samples, different valid text lengths
    c.reference = c.run()
    return c


@pytest.mark.parametrize("backend", ["reference", "flex", "auto"])
def test_hunyuan_padding_dense_plan_matches(padded, backend):
    # The padding matters: unmasked text changes the output.
    unmasked = list(padded.args)
    unmasked[3] = torch.ones_like(unmasked[3])
    with torch.no_grad():
        assert (padded.model(*unmasked).sample - padded.reference).abs().max() > 1e-3
    apply_diffusers(padded.model, dense_plan(padded), backend=backend)
    try:
        torch.testing.assert_close(padded.run(), padded.reference, atol=1e-5, rtol=1e-5)
    finally:
        remove_diffusers(padded.model)


def test_hunyuan_padding_sparse_plan_flex_equals_reference(padded):
    plan = sparse_plan(padded.signature, padded.layout)
    outs = {}
    for backend in ("reference", "flex"):
        apply_diffusers(padded.model, plan, backend=backend)
        outs[backend] = padded.run()
        remove_diffusers(padded.model)
    torch.testing.assert_close(outs["flex"], outs["reference"], atol=1e-5, rtol=1e-5)
    assert (outs["reference"] - padded.reference).abs().max() > 1e-3
    apply_diffusers(padded.model, plan, backend="masked_sdpa")
    try:
        with pytest.raises(BackendError, match="log-sum-exp"):
            padded.run()
    finally:
        remove_diffusers(padded.model)


def _oracle(q, k, v, pats, layout, key_valid):
    """Masked dense attention with each pattern's token mask (frame-major) AND the key mask."""
    outs = []
    for h, p in enumerate(pats):
        inv = layout.inverse_permutation(p.ordering)
        mask = p.token_mask()[inv][:, inv][None] & key_valid[:, None, :]  # [B, N, N]
        s = (q[:, h] @ k[:, h].transpose(-1, -2)) / q.shape[-1] ** 0.5
        s = s.masked_fill(~mask, float("-inf"))
        w = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)
        outs.append(w @ v[:, h])
    return torch.stack(outs, 1)


@pytest.mark.parametrize("text_position", ["suffix", "prefix"])
@pytest.mark.parametrize("backend", ["reference", "flex"])
def test_key_masked_sparse_attention_matches_oracle(text_position, backend):
    layout = sv.TokenLayout(3, 5, 6, text_tokens=20, text_position=text_position)  # 110 tokens: partial blocks
    n = layout.num_tokens
    pats = [
        P.build("diagonal", layout, block_size=BS, width=24),
        P.build("diagonal", layout, block_size=BS, width=24, text_cols=False),
        P.build("multi_diagonal", layout, block_size=BS, width=16),
        P.build("vertical_stripe", layout, block_size=BS, sink_frames=1),
        P.build("skip", layout, block_size=BS),
        P.build("dense", layout, block_size=BS),
    ]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, len(pats), n, 16, generator=g) for _ in range(3))
    t0, t1 = layout.text_range
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[0, t0 + 13 : t1] = False  # sample 0: 13 valid text tokens
    key_valid[1, t0 + 4 : t1] = False  # sample 1: 4
    out = sparse_attention_key_masked(q, k, v, pats, layout=layout, key_valid=key_valid, backend=backend)
    torch.testing.assert_close(out, _oracle(q, k, v, pats, layout, key_valid), atol=1e-5, rtol=1e-5)
    # no padding: the plain call
    plain = sparse_attention_key_masked(q, k, v, pats, layout=layout, key_valid=torch.ones(2, n, dtype=torch.bool), backend=backend)
    torch.testing.assert_close(plain, sv.sparse_attention(q, k, v, pats, layout=layout, backend=backend))


@pytest.mark.parametrize("text_position", ["suffix", "prefix"])
def test_key_masked_attention_of_a_device_selection_matches_oracle(text_position):
    """A dynamic method's BlockSelection under a key-padding mask (HunyuanVideo's padded text): trimmed and
    merged on the device, equal to masked dense attention with the selection's masks."""
    from sparsevdit.methods.topk import TopKParams, select

    layout = sv.TokenLayout(3, 5, 6, text_tokens=20, text_position=text_position)  # 110 tokens: partial blocks
    n = layout.num_tokens
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for _ in range(3))
    counts, indices = select(q, k, layout, BS, TopKParams(tau=0.5, keep_text=False))
    counts[1, 0], indices[1, 0] = 0, -1  # an empty row
    sel = P.BlockSelection(layout, BS, counts, indices, name="topk")
    t0, t1 = layout.text_range
    key_valid = torch.ones(2, n, dtype=torch.bool)
    key_valid[0, t0 + 13 : t1] = False
    key_valid[1, t0 + 4 : t1] = False
    out = sparse_attention_key_masked(q, k, v, sel, layout=layout, key_valid=key_valid, backend="reference")
    torch.testing.assert_close(out, _oracle(q, k, v, sel.to_patterns(), layout, key_valid), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(  # and the patterns' own path
        out, sparse_attention_key_masked(q, k, v, sel.to_patterns(), layout=layout, key_valid=key_valid, backend="reference"),
        atol=1e-6, rtol=1e-6)


def test_a_selection_round_trips_through_its_block_mask():
    layout = sv.TokenLayout(2, 5, 6, text_tokens=9, text_position="prefix")
    nb = P.num_blocks(layout.num_tokens, BS)
    mask = torch.rand(3, nb, nb, generator=torch.Generator().manual_seed(2)) < 0.4
    mask[0, 1] = False
    sel = P.BlockSelection.from_block_mask(layout, BS, mask)
    assert torch.equal(sel.block_mask(), mask) and sel.counts.tolist() == mask.sum(-1).tolist()
    assert all(torch.equal(p.block_mask, m) for p, m in zip(sel.to_patterns(), mask))


# ------------------------------------------------------------------------------------------------
# sparsevdit generate
# ------------------------------------------------------------------------------------------------
def _cli():
    from typer.testing import CliRunner

    from sparsevdit.cli import app

    return CliRunner(), app


def test_generate_fails_clearly_without_weights(tmp_path):
    c = _wan()
    plan = tmp_path / "plan.json"
    dense_plan(c).save(plan)
    runner, app = _cli()
    missing = tmp_path / "no-such-model"
    result = runner.invoke(app, ["generate", "--model", str(missing), "--plan", str(plan), "--out", str(tmp_path / "v.mp4")])
    assert result.exit_code == 2
    assert str(missing) in "".join(result.output.split())
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["generate", "--model", str(empty), "--out", str(tmp_path / "v.mp4")])
    assert result.exit_code == 2 and "model_index.json" in result.output


class _TinyPipeline:
    """Stands in for a loaded diffusers pipeline: a CFG denoising loop over a real (tiny) transformer."""

    vae_scale_factor_temporal = 4
    vae_scale_factor_spatial = 2

    def __init__(self, transformer):
        self.transformer = transformer
        self.calls = []

    def to(self, device):
        return self

    def __call__(self, prompt, num_frames=5, height=8, width=8, num_inference_steps=2, generator=None, output_type="np"):
        self.calls.append(dict(prompt=prompt, num_frames=num_frames, height=height, width=width, steps=num_inference_steps))
        t_lat = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        x = torch.randn(1, 4, t_lat, height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial, generator=generator)
        text = torch.randn(1, 8, 16, generator=generator)
        with torch.no_grad():
            for t in torch.linspace(999, 1, num_inference_steps):
                cond = self.transformer(x, t[None], text).sample
                uncond = self.transformer(x, t[None], torch.zeros_like(text)).sample
                x = x - 0.1 * (uncond + 2.0 * (cond - uncond))
        frames = torch.sigmoid(x[0, :3]).permute(1, 2, 3, 0).numpy()  # [T, H, W, 3] in [0, 1]
        return SimpleNamespace(frames=frames[None])


def test_generate_runs_a_diffusers_pipeline_with_a_plan(tmp_path, monkeypatch):
    import diffusers

    c = _wan()
    folder = tmp_path / "tiny-wan"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    pipe = _TinyPipeline(c.model)
    loaded = []

    def fake_from_pretrained(name, **kwargs):
        loaded.append(name)
        return pipe

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", staticmethod(fake_from_pretrained))
    plan = tmp_path / "plan.json"
    sparse_plan(c.signature, c.layout).save(plan)
    runner, app = _cli()
    out = tmp_path / "video.gif"
    result = runner.invoke(app, ["generate", "--model", str(folder), "--plan", str(plan), "--steps", "3", "--out", str(out),
                                 "--backend", "reference", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert loaded == [str(folder)] and out.exists()
    # frames / height / width default to the plan's layout (4 x 8 x 8 latent tokens, patch 1x2x2)
    assert pipe.calls == [dict(prompt="A cat walks on the grass, realistic", num_frames=13, height=32, width=32, steps=3)]
    assert step_history(c.model) == [0, 0, 1, 1, 2, 2]
    remove_diffusers(c.model)


def test_generate_bundled_dense(tmp_path):
    runner, app = _cli()
    out = tmp_path / "b.gif"
    result = runner.invoke(app, ["generate", "--frames", "2", "--height", "16", "--width", "16", "--steps", "2",
                                 "--prompt", "orbit", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert out.exists()
