"""``sparsevdit train`` (the bundled video DiT on procedural clips) and ``sparsevdit classes``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import at_least, bad, check_device, check_out_folder, console, finite


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        out: Path = typer.Option(Path("out/train"), "--out", "-o", callback=check_out_folder, help="folder for log.jsonl, loss.png, checkpoint.pt, weights/"),
        steps: int = typer.Option(3000, callback=at_least(1), help="optimizer steps"),
        batch: int = typer.Option(32, callback=at_least(1), help="clips per step"),
        lr: float = typer.Option(3e-4, callback=finite(0, min_open=True), help="peak learning rate (warm-up, then cosine to 10%)"),
        max_minutes: Optional[float] = typer.Option(None, callback=finite(0, min_open=True), help="end the run after this many training minutes (summed over resumes); the cosine schedule ends there"),
        stop_after_minutes: Optional[float] = typer.Option(None, callback=finite(0, min_open=True), help="stop this invocation (saving a checkpoint) after N minutes; continue later with --resume"),
        compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the training step (default: on for CUDA)"),
        eval_every: int = typer.Option(250, callback=at_least(1), help="validation on held-out seeds every N steps"),
        frames: int = typer.Option(16, callback=at_least(1), help="training clip frames"),
        size: int = typer.Option(64, callback=at_least(4), help="training clip height = width, pixels (a multiple of the patch size 4)"),
        dim: int = typer.Option(384, callback=at_least(1), help="model width (a multiple of --heads)"),
        depth: int = typer.Option(8, callback=at_least(1), help="transformer blocks"),
        heads: int = typer.Option(6, callback=at_least(1), help="attention heads"),
        device: str = typer.Option("auto", callback=check_device, help="cpu, cuda or auto"),
        seed: int = typer.Option(0, callback=at_least(0), help="random seed (data stream and initialisation)"),
        resume: bool = typer.Option(False, help="continue from out/checkpoint.pt"),
        init_weights: Optional[Path] = typer.Option(None, help="fine-tune: start from this weights folder (model and EMA; fresh optimizer); the architecture comes from its config.json"),
        schedule: Optional[str] = typer.Option(None, help="clip sizes the steps cycle through, FRAMESxHEIGHTxWIDTH:BATCH[*REPEAT], e.g. 16x128x128:16*3,16x64x64:32 (default: --frames x --size x --size at --batch); the first is the model's size"),
        warmup: int = typer.Option(200, callback=at_least(0), help="linear learning-rate warm-up steps"),
        text_in_attention: Optional[bool] = typer.Option(None, "--text-in-attention/--no-text-in-attention", help="the condition's tokens also join self-attention as a text prefix (default: as in --init-weights, else off)"),
        checkpoint_every: Optional[int] = typer.Option(None, callback=at_least(1), help="save out/checkpoint.pt every N steps (default: max(--eval-every, 100)); a run that stops always saves one"),
        class_weights: Optional[str] = typer.Option(None, help="show some scene classes more often, NAME=WEIGHT[,NAME=WEIGHT] (others weigh 1), e.g. bounce=3; default: uniform. `sparsevdit classes` lists the names"),
    ) -> None:
        """Train the video DiT on procedural clips (rectified flow; bf16 on GPU; tiny sizes run on CPU)."""
        from ..models.data import CLASSES
        from ..models.train import TrainConfig, train as run_train
        from ..models.vdit import VDiTConfig

        from dataclasses import replace

        from ..models.train import ClipSize

        sizes = ()
        if schedule is not None:
            try:
                sizes = ClipSize.parse_schedule(schedule)
            except ValueError as e:
                bad("--schedule", schedule, str(e).split(": ", 1)[1])
            frames, size, batch = sizes[0].frames, sizes[0].height, sizes[0].batch
        if init_weights is not None:
            from ..models.weights import read_config

            try:
                model = replace(read_config(init_weights), frames=frames, height=size, width=size)
            except (OSError, ValueError, TypeError) as e:
                bad("--init-weights", str(init_weights), f"a weights folder written by `sparsevdit train` ({e})")
            for option, given, default, saved in (("--dim", dim, 384, model.dim), ("--depth", depth, 8, model.depth),
                                                  ("--heads", heads, 6, model.heads)):
                if given != default and given != saved:  # a fine-tune keeps the saved architecture
                    bad(option, given, f"the architecture of --init-weights ({option} {saved}); drop {option}")
        else:
            model = VDiTConfig(dim=dim, depth=depth, heads=heads, num_classes=len(CLASSES), frames=frames, height=size, width=size)
        if text_in_attention is not None:
            model = replace(model, text_in_attention=text_in_attention)
        for entry in sizes or (ClipSize(frames, size, size, batch),):
            if entry.height % model.patch or entry.width % model.patch:
                bad("--schedule" if sizes else "--size", schedule or size, f"heights and widths that are multiples of the patch size {model.patch}")
        if model.dim % model.heads:
            bad("--dim", dim, f"a multiple of --heads {heads}")
        if compile is None:
            import torch

            compile = device != "cpu" and torch.cuda.is_available()
        cfg = TrainConfig(steps=steps, batch=batch, lr=lr, max_minutes=max_minutes, stop_after_minutes=stop_after_minutes,
                          compile=compile, eval_every=eval_every, seed=seed, warmup=warmup,
                          checkpoint_every=checkpoint_every or max(eval_every, 100), model=model, schedule=sizes,
                          init_weights=str(init_weights) if init_weights is not None else None,
                          class_weights=_parse_class_weights(class_weights) if class_weights is not None else None)
        meta = run_train(cfg, out, device=device, resume=resume, log=console.print)
        start = "start" if init_weights is not None else "untrained"
        console.print(f"validation loss {meta['val_loss_untrained']:.4f} ({start}) -> {meta['val_loss_final']:.4f}; weights in {out / 'weights'}")

    @app.command("classes")
    def list_classes() -> None:
        """The scene classes of the bundled model's training data, with their captions."""
        from ..models.data import CLASSES, caption_for

        for i, name in enumerate(CLASSES):
            console.print(f"{i}: {name} - {caption_for(i)}")


def _parse_class_weights(text: str) -> tuple[float, ...]:
    """``bounce=3,orbit=2`` -> one weight per class of the training data, 1 for the classes not named."""
    import math

    from ..models.data import CLASSES

    weights = dict.fromkeys(CLASSES, 1.0)
    for item in text.split(","):
        name, eq, value = item.strip().partition("=")
        if name not in weights or not eq:
            bad("--class-weights", text, f"NAME=WEIGHT entries with NAME one of {', '.join(CLASSES)}")
        try:
            w = float(value)
        except ValueError:
            w = float("nan")
        if not math.isfinite(w) or w < 0:
            bad("--class-weights", text, f"a finite weight >= 0 for {name}, got {value!r}")
        weights[name] = w
    if sum(weights.values()) <= 0:
        bad("--class-weights", text, "at least one class with a positive weight")
    return tuple(weights.values())
