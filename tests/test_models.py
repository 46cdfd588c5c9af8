"""The bundled video DiT: shapes, sparse attention plumbing, training, weights."""

import dataclasses
import json

import pytest
import torch

from sparsevdit import patterns as P
from sparsevdit.models.data import CLASSES
from sparsevdit.models.train import ClipSize, TrainConfig, train, validation_loss
from sparsevdit.models.vdit import SamplerConfig, VDiTConfig, VideoDiT, apply_rope, flow_matching_loss, rope_3d, sample
from sparsevdit.models.weights import load_weights, save_weights

TINY = VDiTConfig(dim=64, depth=2, heads=2, num_classes=len(CLASSES), frames=4, height=16, width=16)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = VideoDiT(TINY)
    for p in model.parameters():  # leave adaLN-zero's zeros behind so outputs depend on everything
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def test_forward_shape_and_other_sizes():
    model = tiny_model()
    for shape in [(2, 3, 4, 16, 16), (1, 3, 6, 24, 20)]:
        x = torch.randn(shape)
        v = model(x, torch.rand(shape[0]), torch.zeros(shape[0], dtype=torch.long))
        assert v.shape == x.shape and torch.isfinite(v).all()


def test_bad_size_is_refused():
    with pytest.raises(ValueError, match="multiples of the patch size"):
        TINY.layout(4, 18, 16)


def test_rope_is_relative():
    """RoPE dot products depend only on the offset between positions."""
    layout = TINY.layout()
    cos, sin = rope_3d(layout, 32, 10000.0, "cpu")
    q = torch.randn(32).expand(1, 1, layout.num_tokens, 32)
    k = torch.randn(32).expand(1, 1, layout.num_tokens, 32)
    qr, kr = apply_rope(q, cos, sin)[0, 0], apply_rope(k, cos, sin)[0, 0]
    w = layout.width
    # token (t, y, x) index = t*H*W + y*W + x; pairs with the same offset (0, 0, 1)
    a = qr[0] @ kr[1]
    b = qr[w + 2] @ kr[w + 3]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_dense_patterns_equal_no_patterns_and_sparse_uses_them():
    model = tiny_model()
    x, t, c = torch.randn(2, 3, 4, 16, 16), torch.rand(2), torch.tensor([0, 1])
    base = model(x, t, c)
    layout = TINY.layout()
    dense = P.build("dense", layout, block_size=16)
    model.set_patterns([[dense] * 2] * 2, backend="reference")
    torch.testing.assert_close(model(x, t, c), base, atol=1e-5, rtol=1e-5)
    diag = P.build("diagonal", layout, block_size=16, width=16)
    model.set_patterns([[diag, dense], [dense, P.build("skip", layout, block_size=16)]], backend="reference")
    sparse_ref = model(x, t, c)
    model.set_patterns([[diag, dense], [dense, P.build("skip", layout, block_size=16)]], backend="flex")
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, c), sparse_ref, atol=1e-5, rtol=1e-5)
    from sparsevdit.kernels import BackendError

    with pytest.raises(BackendError, match="no backward on CPU"):
        model(x, t, c)
    assert (sparse_ref - base).abs().max() > 1e-4
    model.clear_patterns()
    torch.testing.assert_close(model(x, t, c), base)


def test_sampling_is_deterministic_per_seed():
    model = tiny_model()
    c = torch.tensor([0, 1])
    a = sample(model, c, frames=4, height=16, width=16, seeds=[3, 4], sampler=SamplerConfig(steps=2))
    b = sample(model, c, frames=4, height=16, width=16, seeds=[3, 4], sampler=SamplerConfig(steps=2))
    torch.testing.assert_close(a, b)
    assert a.shape == (2, 3, 4, 16, 16) and a.abs().max() <= 1
    steps = []
    sample(model, c[:1], frames=4, height=16, width=16, seeds=[3], sampler=SamplerConfig(steps=3), on_step=steps.append)
    assert steps == [0, 1, 2]


def test_loss_is_finite_and_has_gradients():
    model = tiny_model()
    loss = flow_matching_loss(model, torch.rand(2, 3, 4, 16, 16) * 2 - 1, torch.tensor([0, 2]), cfg_dropout=0.5)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_weights_round_trip_fp16(tmp_path):
    model = tiny_model()
    save_weights(model, tmp_path, meta={"note": "test"})
    loaded = load_weights(tmp_path)
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a.half().float(), b, msg=n)
    assert json.loads((tmp_path / "config.json").read_text())["meta"]["note"] == "test"
    with pytest.raises(FileNotFoundError, match="sparsevdit train"):
        load_weights(tmp_path / "missing")


def test_train_tiny_on_cpu_and_resume(tmp_path):
    cfg = TrainConfig(steps=4, batch=2, eval_every=2, checkpoint_every=2, val_clips=2, warmup=2, model=TINY)
    meta = train(cfg, tmp_path, device="cpu", log=lambda *a: None)
    assert meta["steps"] == 4 and (tmp_path / "loss.png").exists() and (tmp_path / "weights" / "config.json").exists()
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4]
    cfg.steps = 6
    meta = train(cfg, tmp_path, device="cpu", resume=True, log=lambda *a: None)
    assert meta["steps"] == 6
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4, 5, 6]


def test_train_stop_after_then_resume_keeps_minutes(tmp_path):
    """A run split over two invocations: the first stops on its own limit, the second continues the clock."""
    cfg = TrainConfig(steps=50, batch=2, eval_every=100, checkpoint_every=100, val_clips=2, warmup=2, model=TINY,
                      stop_after_minutes=1e-6)
    meta = train(cfg, tmp_path, device="cpu", log=lambda *a: None)
    assert meta["stopped_early"] and meta["steps"] == 1
    first = [r for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if "loss" in r]
    cfg.stop_after_minutes, cfg.steps = None, 3
    meta = train(cfg, tmp_path, device="cpu", resume=True, log=lambda *a: None)
    rows = [r for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] and meta["steps"] == 3
    assert rows[1]["minutes"] >= first[0]["minutes"]


def test_train_compiled_step_on_cpu(tmp_path):
    pytest.importorskip("torch._inductor")
    cfg = TrainConfig(steps=2, batch=2, eval_every=100, checkpoint_every=100, val_clips=2, warmup=1, model=TINY, compile=True)
    meta = train(cfg, tmp_path, device="cpu", log=lambda *a: None)
    assert meta["steps"] == 2 and meta["compiled"]


# progressive resolution and the text prefix ------------------------------------------------------
TEXT = dataclasses.replace(TINY, text_in_attention=True)


def test_text_prefix_layout_rope_and_patterns():
    layout = TEXT.layout()
    assert layout.num_text == TEXT.context_tokens and layout.text_position == "prefix"
    assert layout.num_tokens == layout.video_tokens + TEXT.context_tokens
    cos, sin = rope_3d(layout, 32, 10000.0, "cpu")
    assert cos.shape[0] == layout.num_tokens
    assert torch.equal(cos[:layout.num_text], torch.ones_like(cos[:layout.num_text]))  # text: no rotation
    assert torch.equal(sin[:layout.num_text], torch.zeros_like(sin[:layout.num_text]))
    video_cos, _ = rope_3d(TINY.layout(), 32, 10000.0, "cpu")
    assert torch.equal(cos[layout.num_text:], video_cos)  # video positions unchanged by the prefix
    torch.manual_seed(0)
    model = VideoDiT(TEXT)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model.eval()
    x, t, c = torch.randn(2, 3, 4, 16, 16), torch.rand(2), torch.tensor([0, 1])
    base = model(x, t, c)
    assert base.shape == x.shape
    seen = []
    model.blocks[0].attn.capture = lambda q, k, v: seen.append(q.shape[2])
    dense = P.build("dense", layout, block_size=16)
    model.set_patterns([[dense] * 2] * 2, backend="reference")
    torch.testing.assert_close(model(x, t, c), base, atol=1e-5, rtol=1e-5)
    assert seen == [layout.num_tokens]
    # the condition reaches the video through self-attention as well: a stripe over the text keys matters
    stripes = P.build("vertical_stripe", layout, block_size=16, sink_frames=1)
    model.set_patterns([[stripes] * 2] * 2, backend="reference")
    assert torch.isfinite(model(x, t, c)).all()


def test_schedule_parsing_and_errors():
    sizes = ClipSize.parse_schedule("4x16x16:2*2, 4x8x8:4")
    assert [s.name for s in sizes] == ["4x16x16", "4x16x16", "4x8x8"] and sizes[2].batch == 4
    for bad in ("4x16:2", "4x16x16", "4x16x16:0", "4x16x16:2*0", "axbxc:1"):
        with pytest.raises(ValueError, match="FRAMESxHEIGHTxWIDTH:BATCH|at least 1"):
            ClipSize.parse_schedule(bad)


def test_class_weights_draw_the_weighted_classes_reproducibly():
    from sparsevdit.models.data import CLASSES
    from sparsevdit.models.train import _step_classes

    only_bounce = TrainConfig(class_weights=[0.0] * 7 + [1.0, 0.0])
    assert _step_classes(only_bounce, 3, 5) == [CLASSES.index("bounce")] * 5
    boosted = TrainConfig(class_weights=[1.0] * 7 + [3.0, 1.0])
    drawn = [c for step in range(200) for c in _step_classes(boosted, step, 16)]
    assert drawn == [c for step in range(200) for c in _step_classes(boosted, step, 16)]
    assert 0.22 < drawn.count(CLASSES.index("bounce")) / len(drawn) < 0.33  # 3 / 11 expected
    assert _step_classes(TrainConfig(), 0, 4) is None
    for bad in ([1.0] * 8, [1.0] * 8 + [float("nan")], [0.0] * 9, [1.0] * 8 + [-1.0]):
        with pytest.raises(ValueError, match="class_weights: 9 finite non-negative"):
            TrainConfig(class_weights=bad)


def test_fine_tune_from_weights_with_a_size_schedule(tmp_path):
    start = tiny_model()
    save_weights(start, tmp_path / "start")
    cfg = TrainConfig(steps=3, batch=2, eval_every=3, checkpoint_every=3, val_clips=2, warmup=1, model=TEXT,
                      schedule=ClipSize.parse_schedule("4x16x16:2*2,2x8x8:3"), init_weights=str(tmp_path / "start"),
                      class_weights=(1.0,) * 7 + (3.0, 1.0))
    meta = train(cfg, tmp_path / "run", device="cpu", log=lambda *a: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["size"] for r in rows if "loss" in r] == ["4x16x16", "4x16x16", "2x8x8"]
    assert set(meta["val_losses_final"]) == {"4x16x16", "2x8x8"}
    # the run started from the saved weights (its step-0 validation is theirs), with text in attention
    fresh = TrainConfig(val_clips=2, model=TEXT, schedule=cfg.schedule)
    assert meta["val_losses_start"]["4x16x16"] == pytest.approx(
        validation_loss(load_weights(tmp_path / "start"), fresh, torch.device("cpu"), False, cfg.schedule[0]), rel=1e-3)
    assert load_weights(tmp_path / "run" / "weights").cfg.text_in_attention


def test_compile_outside_attention_matches_eager_and_keeps_attention_eager():
    pytest.importorskip("torch._inductor")
    model = tiny_model()
    x, t, c = torch.randn(1, 3, 4, 16, 16), torch.rand(1), torch.tensor([3])
    with torch.no_grad():
        eager = model(x, t, c)
        model.compile_outside_attention()
        torch.testing.assert_close(model(x, t, c), eager, atol=2e-4, rtol=2e-4)
        # the attention call is left to the eager dispatcher, so a sparse pattern set afterwards is used
        diag = P.build("diagonal", TINY.layout(), block_size=16, width=16)
        model.set_patterns([[diag] * 2] * 2, backend="reference")
        assert (model(x, t, c) - eager).abs().max() > 1e-4
