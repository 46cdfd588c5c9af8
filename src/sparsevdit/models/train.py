"""Training the bundled video DiT on procedural clips (rectified flow), with resume and a loss curve."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..atomic_files import non_finite_as_null, saving, write_json
from ..torch_files import load_plain
from .data import CLASSES, make_batch
from .vdit import VDiTConfig, VideoDiT, flow_matching_loss
from .weights import save_weights

VAL_SEED_BASE = 1_000_000_000  # held-out clips: training seeds stay far below this


@dataclass(frozen=True)
class ClipSize:
    """One entry of a size schedule: clips of frames x height x width pixels, ``batch`` of them per step."""

    frames: int
    height: int
    width: int
    batch: int

    @property
    def name(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"

    @classmethod
    def parse_schedule(cls, text: str) -> tuple["ClipSize", ...]:
        """``"16x128x128:16*3,16x64x64:32"``: three steps of 16 clips at 128 px, then one of 32 at 64 px, repeated."""
        out = []
        for item in text.split(","):
            item = item.strip()
            size, _, rest = item.partition(":")
            batch, _, repeat = rest.partition("*")
            try:
                f, h, w = (int(v) for v in size.split("x"))
                entry, times = cls(f, h, w, int(batch)), int(repeat or 1)
            except ValueError:
                raise ValueError(f"bad size schedule entry {item!r}: expected FRAMESxHEIGHTxWIDTH:BATCH[*REPEAT], "
                                 "e.g. 16x128x128:16*3") from None
            if min(f, h, w, entry.batch, times) < 1:
                raise ValueError(f"bad size schedule entry {item!r}: every number must be at least 1")
            out += [entry] * times
        return tuple(out)


@dataclass
class TrainConfig:
    steps: int = 3000
    batch: int = 32
    lr: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.01
    # 0.999 averaged over almost all of a 1,000-step run (early weights included) and gave blurry samples.
    ema: float = 0.995
    cfg_dropout: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 250
    val_clips: int = 64
    checkpoint_every: int = 500
    max_minutes: float | None = None  # stop (and save) after this much training time, summed over resumes
    # Stop this run (and save a checkpoint) after this many minutes, without ending the schedule: a long
    # run split over several sessions resumes with the same max_minutes and the cosine continues.
    stop_after_minutes: float | None = None
    compile: bool = False  # torch.compile the training forward/backward (GPU: ~1 min to compile)
    model: VDiTConfig = field(default_factory=VDiTConfig)
    # Steps cycle through these clip sizes (progressive resolution with small clips mixed in); empty:
    # the model's training size at ``batch``. Validation runs at every size of the schedule.
    schedule: tuple[ClipSize, ...] = ()
    # Start from these saved weights (model and EMA) with a fresh optimizer: a fine-tune, not a resume.
    init_weights: str | None = None
    # Relative frequency of each scene class in the training stream (one weight per class of
    # ``data.CLASSES``); None: each clip's class comes from its seed (uniform). A fine-tune uses it to
    # show a class the model still gets wrong more often.
    class_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.class_weights is not None:
            w = tuple(float(v) for v in self.class_weights)
            if len(w) != len(CLASSES) or not all(math.isfinite(v) and v >= 0 for v in w) or sum(w) <= 0:
                raise ValueError(f"class_weights: {len(CLASSES)} finite non-negative weights (one per class of "
                                 f"{', '.join(CLASSES)}) with a positive sum, got {self.class_weights!r}")
            object.__setattr__(self, "class_weights", w)

    def sizes(self) -> tuple[ClipSize, ...]:
        m = self.model
        return self.schedule or (ClipSize(m.frames, m.height, m.width, self.batch),)

    def validation_sizes(self) -> list[ClipSize]:
        return list(dict.fromkeys(self.sizes()))


def _step_classes(cfg: TrainConfig, step: int, n: int) -> list[int] | None:
    """The classes of one step's clips under ``cfg.class_weights`` (None: drawn from the seeds), reproducible per step."""
    if cfg.class_weights is None:
        return None
    gen = torch.Generator().manual_seed(cfg.seed * 104729 + step)
    return torch.multinomial(torch.tensor(cfg.class_weights), n, replacement=True, generator=gen).tolist()


def _lr(step: int, cfg: TrainConfig, minutes: float = 0.0) -> float:
    """Linear warm-up, then cosine to 10%, finishing at ``steps`` or ``max_minutes``, whichever comes first."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.max_minutes:
        progress = max(progress, minutes / cfg.max_minutes)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def validation_loss(model: VideoDiT, cfg: TrainConfig, device, amp: bool, size: ClipSize | None = None) -> float:
    """Loss on held-out seeds at fixed flow times and noise: comparable across runs and steps."""
    model.eval()
    size = size or cfg.sizes()[0]
    total, count = 0.0, 0
    ts = torch.linspace(0.05, 0.95, 8)
    for start in range(0, cfg.val_clips, 16):
        seeds = list(range(VAL_SEED_BASE + start, VAL_SEED_BASE + min(cfg.val_clips, start + 16)))
        x0, classes = make_batch(seeds, size.frames, size.height, size.width, device=device)
        gen = torch.Generator(device="cpu").manual_seed(start)
        for t in ts:
            noise = torch.randn(x0.shape, generator=gen).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = flow_matching_loss(model, x0, classes, t=torch.full((x0.shape[0],), float(t), device=device), noise=noise)
            total += float(loss) * x0.shape[0]
            count += x0.shape[0]
    model.train()
    return total / count


def validate(model: VideoDiT, cfg: TrainConfig, device, amp: bool, step: int) -> dict:
    """A history record: ``val_loss`` at the schedule's first size, ``val`` at every size."""
    losses = {size.name: validation_loss(model, cfg, device, amp, size) for size in cfg.validation_sizes()}
    return {"step": step, "val_loss": next(iter(losses.values())), "val": losses}


def _describe(record: dict) -> str:
    return ", ".join(f"{name} {loss:.4f}" for name, loss in record["val"].items()) if "val" in record else f"{record['val_loss']:.4f}"


class CheckpointError(ValueError):
    """A file that is not a training checkpoint we can resume from; the message says why."""


def _save_checkpoint(path: Path, model, ema, opt, step, cfg, history) -> None:
    # tensors and plain data only (the config as a dict): load_checkpoint reads it with weights_only=True
    with saving(path) as tmp:
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                    "train_config": asdict(cfg), "history": history}, tmp)


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    """A checkpoint written by ``train``; CheckpointError for any other file (never runs code from it)."""
    expected = "a checkpoint.pt written by `sparsevdit train`"
    state = load_plain(path, what=expected, error=CheckpointError, map_location=device)
    missing = [k for k in ("model", "ema", "opt", "step", "history") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; expected {expected}")
    return state


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    tr = [h for h in history if "loss" in h]
    va = [h for h in history if "val_loss" in h]
    if tr:
        steps = [h["step"] for h in tr]
        losses = torch.tensor([h["loss"] for h in tr])
        k = max(1, len(losses) // 50)
        smooth = torch.nn.functional.avg_pool1d(losses[None, None], k, stride=1)[0, 0] if len(losses) >= k else losses
        ax.plot(steps, losses.tolist(), color="#bbb", lw=0.6, label="train (per step)")
        ax.plot(steps[k - 1:], smooth.tolist(), color="#1f77b4", lw=1.2, label=f"train (mean of {k})")
    names = list(dict.fromkeys(name for h in va for name in h.get("val", {})))
    if len(names) > 1:  # a size schedule: one validation curve per size
        for name, colour in zip(names, ("#d62728", "#2ca02c", "#9467bd", "#ff7f0e")):
            pts = [(h["step"], h["val"][name]) for h in va if name in h.get("val", {})]
            ax.plot(*zip(*pts), "o-", color=colour, label=f"validation {name} px (held-out seeds)")
    elif va:
        ax.plot([h["step"] for h in va], [h["val_loss"] for h in va], "o-", color="#d62728", label="validation (held-out seeds)")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with saving(path, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def train(cfg: TrainConfig, out: str | os.PathLike, *, device: str = "auto", resume: bool = False, log=print) -> dict:
    """Train, writing ``out/log.jsonl``, ``out/loss.png``, ``out/checkpoint.pt`` and ``out/weights/`` (EMA, fp16)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    amp = dev.type == "cuda"
    if amp:
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    model = VideoDiT(cfg.model).to(dev)
    if cfg.init_weights and not (resume and (out / "checkpoint.pt").exists()):
        from .weights import load_weights

        start = load_weights(cfg.init_weights)
        model.load_state_dict(start.state_dict())  # fp16 on disk, float32 here
        log(f"starting from the weights in {cfg.init_weights} (fresh optimizer, {cfg.warmup} warm-up steps)")
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay,
                            fused=dev.type == "cuda")
    step, history = 0, []
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, dev)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, history = state["step"], state["history"]
        log(f"resumed from {ckpt_path} at step {step}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"VideoDiT {n_params / 1e6:.1f}M parameters, {cfg.model.layout()} per clip, device {dev}")
    if step == 0:
        history.append(validate(ema, cfg, dev, amp, 0))
        log(f"step 0 validation loss ({'start' if cfg.init_weights else 'untrained'}) {_describe(history[-1])}")

    # Training minutes continue across resumes, so the time-based schedule and max_minutes see the whole run.
    prior_minutes = max((h.get("minutes", 0.0) for h in history), default=0.0)
    started = time.time() - prior_minutes * 60
    run_started = time.time()
    # one specialised graph per clip size of the schedule (a dynamic-shape graph is slower)
    forward_model = torch.compile(model, dynamic=False) if cfg.compile else model
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    log_file = open(out / "log.jsonl", "a")
    if step == 0:  # the starting validation belongs in the log too
        log_file.write(json.dumps(history[-1]) + "\n")
    sizes = cfg.sizes()
    stride = max(s.batch for s in sizes)  # seeds never repeat across steps
    stopped_early = False
    while step < cfg.steps:
        size = sizes[step % len(sizes)]
        seeds = torch.arange(step * stride, step * stride + size.batch) + cfg.seed * 10_000_000
        x0, classes = make_batch(seeds.tolist(), size.frames, size.height, size.width,
                                 classes=_step_classes(cfg, step, size.batch), device=dev)
        lr = _lr(step, cfg, (time.time() - started) / 60)
        for g in opt.param_groups:
            g["lr"] = lr
        gen = torch.Generator(device=dev).manual_seed(cfg.seed * 7919 + step)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = flow_matching_loss(forward_model, x0, classes, cfg_dropout=cfg.cfg_dropout, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, model_params, 1 - decay)
        step += 1
        rec = {"step": step, "loss": float(loss.detach()), "grad_norm": float(gnorm), "lr": lr,
               "minutes": (time.time() - started) / 60, "size": size.name}
        history.append(rec)
        log_file.write(json.dumps(rec) + "\n")
        over_time = (cfg.max_minutes is not None and (time.time() - started) / 60 >= cfg.max_minutes) or (
            cfg.stop_after_minutes is not None and (time.time() - run_started) / 60 >= cfg.stop_after_minutes)
        if step % cfg.eval_every == 0 or step == cfg.steps or over_time:
            history.append(validate(ema, cfg, dev, amp, step))
            log_file.write(json.dumps(history[-1]) + "\n")
            log_file.flush()
            log(f"step {step}/{cfg.steps} loss {rec['loss']:.4f} val {_describe(history[-1])} lr {rec['lr']:.2e} {rec['minutes']:.1f} min")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or over_time:
            _save_checkpoint(ckpt_path, model, ema, opt, step, cfg, history)
        if over_time:
            stopped_early = True
            log(f"stopping at step {step}: time limit reached ({rec['minutes']:.1f} training minutes in all)")
            break
    log_file.close()
    plot_history(history, out / "loss.png")
    meta = {
        "steps": step, "batch": cfg.batch, "train_config": asdict(cfg), "device": str(dev),
        "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "train_minutes": (time.time() - started) / 60, "compiled": cfg.compile,
        "val_loss_untrained": next(h["val_loss"] for h in history if "val_loss" in h),
        "val_loss_final": [h["val_loss"] for h in history if "val_loss" in h][-1],
        "val_losses_start": next((h["val"] for h in history if "val" in h), None),
        "val_losses_final": [h.get("val") for h in history if "val_loss" in h][-1],
        "schedule": [asdict(s) for s in cfg.sizes()],
        "stopped_early": stopped_early, "classes": CLASSES,
    }
    save_weights(ema, out / "weights", meta=meta)
    write_json(out / "summary.json", non_finite_as_null(meta))  # a diverged loss is null, not invalid JSON
    return meta
