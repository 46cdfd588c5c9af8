"""``sparsevdit generate``: one video from the bundled model or a diffusers pipeline, with a plan.

``--model bundled`` (default) samples our small VideoDiT (``models.vdit.sample``); any other value is
a diffusers pipeline folder or Hugging Face Hub id loaded with ``DiffusionPipeline.from_pretrained``.
The plan (``--plan``, from ``sparsevdit search``) is installed with ``sparsevdit.integrations.apply``;
without it attention stays dense. Frames / height / width default to the size the plan was made for.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import List, Optional

import typer

from .common import (at_least, check_backend, check_device, check_pixels, console, fail as _fail, finite, load_plan,
                     method_choice, one_of, resolve_device)

DTYPES = ("auto", "float32", "float16", "bfloat16")


def _dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def _check_video_out(value: Path) -> Path:
    if value.suffix not in (".mp4", ".gif"):
        raise typer.BadParameter(f"{str(value)!r} does not end in .mp4 or .gif.")
    if value.is_dir():
        raise typer.BadParameter(f"{str(value)!r} is a folder: give a video file name.")
    return value


def _to_uint8(frames):
    """Pipeline output (np float [T, H, W, C] in [0, 1], uint8, or a list of PIL images) to uint8 [T, H, W, 3]."""
    import numpy as np

    if isinstance(frames, (list, tuple)):
        frames = np.stack([np.asarray(f) for f in frames])
    if hasattr(frames, "detach"):  # a torch tensor
        frames = frames.detach().float().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return frames[..., :3]


# --------------------------------------------------------------------------------------------------
# bundled model
# --------------------------------------------------------------------------------------------------
def _bundled_class(prompt: Optional[str]) -> int:
    from ..models.data import CLASSES

    if prompt is None:
        return 0
    text = prompt.strip().lower()
    if text.isdigit() and int(text) < len(CLASSES):
        return int(text)
    for i, name in enumerate(CLASSES):
        if name in text.split() or text == name:
            return i
    _fail(
        f"the bundled model is conditioned on a scene class, not free text: give --prompt as one of "
        f"{', '.join(CLASSES)} or its index (see `sparsevdit classes`); got {prompt!r}"
    )


def _generate_bundled(plan, *, prompt, frames, height, width, steps, guidance, seed, out, fps, device, dtype, backend,
                      method=None, block_size=128, ultravico=None):
    import torch

    from ..integrations import apply
    from ..integrations.bundled import check_layout
    from ..models.vdit import SamplerConfig, sample
    from ..models.weights import load_weights
    from ..video_io import to_uint8_frames, write_video
    from .common import model_config

    cfg = model_config(None)
    check_pixels(cfg, frames=frames, height=height, width=width)
    cls = _bundled_class(prompt)
    p = cfg.patch
    if plan is not None:
        frames = frames or plan.layout.frames
        height = height or plan.layout.height * p
        width = width or plan.layout.width * p
    frames, height = frames or 16, height or (48 if device == "cpu" else 128)
    width = width or height
    steps = steps or (16 if device == "cpu" else 30)
    model = load_weights(None, device=device, dtype=dtype)
    if plan is not None:
        # A plan for another model or clip size is refused here, before sampling.
        apply(model, plan, backend=backend, ultravico=ultravico)
        check_layout(plan, model, model.cfg.layout(frames, height, width))
    elif method is not None:
        apply(model, method=method[0], block_size=block_size, backend=backend, ultravico=ultravico, **method[1])
    elif ultravico is not None:
        apply(model, block_size=block_size, backend=backend, ultravico=ultravico)
    sampler = SamplerConfig(steps=steps, guidance=3.0 if guidance is None else guidance)
    t0 = time.perf_counter()
    video = sample(model, torch.tensor([cls], device=device), frames=frames, height=height, width=width,
                   seeds=[seed], sampler=sampler)
    seconds = time.perf_counter() - t0
    write_video(to_uint8_frames(video[0], upscale=max(1, 256 // width)), out, fps=fps or 8)
    return seconds, f"bundled VideoDiT, class {cls}, {frames}x{height}x{width} px, {steps} steps"


# --------------------------------------------------------------------------------------------------
# diffusers pipelines
# --------------------------------------------------------------------------------------------------
def _load_pipeline(name: str, dtype):
    from .pipelines import load_pipeline

    return load_pipeline(name, dtype, option="--pipeline")


def _pixel_defaults(pipe, layout) -> dict:
    """frames / height / width in pixels whose latent token grid is ``layout`` (best effort)."""
    cfg = getattr(getattr(pipe, "transformer", None), "config", None)
    vt, vs = getattr(pipe, "vae_scale_factor_temporal", None), getattr(pipe, "vae_scale_factor_spatial", None)
    if cfg is None or vt is None or vs is None:
        return {}
    patch = getattr(cfg, "patch_size", None)
    if isinstance(patch, (tuple, list)):
        p_t, p_h, p_w = patch
    elif isinstance(patch, int):
        p_t, p_h, p_w = getattr(cfg, "patch_size_t", None) or 1, patch, patch
    else:
        return {}
    return {
        "num_frames": (layout.frames * p_t - 1) * vt + 1,
        "height": layout.height * p_h * vs,
        "width": layout.width * p_w * vs,
    }


def _generate_diffusers(plan, *, name, prompt, negative_prompt, frames, height, width, steps, guidance, seed, out, fps,
                        device, dtype, backend, method=None, block_size=128, ultravico=None):
    import torch

    from ..plan import PlanError
    from ..video_io import write_video

    pipe = _load_pipeline(name, dtype)
    pipe.to(device)
    kwargs = {}
    if plan is not None:
        from ..integrations import apply

        try:
            apply(pipe, plan, backend=backend, ultravico=ultravico)
        except (PlanError, TypeError) as exc:
            _fail(str(exc))
        kwargs.update(_pixel_defaults(pipe, plan.layout))
        if plan.layout.num_text:
            kwargs["max_sequence_length"] = plan.layout.text_tokens
    elif method is not None:
        from ..integrations import apply

        try:
            apply(pipe, method=method[0], block_size=block_size, backend=backend, ultravico=ultravico, **method[1])
        except (PlanError, TypeError) as exc:
            _fail(str(exc))
    elif ultravico is not None:
        from ..integrations import apply

        apply(pipe, block_size=block_size, backend=backend, ultravico=ultravico)
    if name.startswith("tiny:"):  # a toy pipeline's own call arguments (its text length, template)
        from ..integrations.tiny_pipelines import TINY_CALL, TINY_SIZES

        family = name.split(":", 1)[1]
        kwargs.setdefault("max_sequence_length", TINY_SIZES[family]["max_sequence_length"])
        kwargs.update(TINY_CALL.get(family, {}))
    given = {"num_frames": frames, "height": height, "width": width, "num_inference_steps": steps,
             "guidance_scale": guidance, "negative_prompt": negative_prompt}
    kwargs.update({k: v for k, v in given.items() if v is not None})
    accepted = set(inspect.signature(pipe.__call__).parameters)
    dropped = sorted(k for k in kwargs if k not in accepted)
    if dropped:
        console.print(f"[yellow]note:[/yellow] {type(pipe).__name__} takes no {', '.join(dropped)}; ignored")
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    generator = torch.Generator(device="cpu").manual_seed(seed)
    t0 = time.perf_counter()
    try:
        result = pipe(prompt=prompt or "A cat walks on the grass, realistic", generator=generator, output_type="np", **kwargs)
    except PlanError as exc:
        _fail(str(exc))
    seconds = time.perf_counter() - t0
    video = result.frames[0] if hasattr(result, "frames") else result[0][0]
    write_video(_to_uint8(video), out, fps=fps or 16)
    return seconds, f"{type(pipe).__name__} from {name}, {', '.join(f'{k}={v}' for k, v in kwargs.items())}"


def _ultravico(text: Optional[str]):
    """``--ultravico TRAIN_FRAMES[:ALPHA]`` as a methods.UltraViCo (None without the option)."""
    if text is None:
        return None
    from ..methods import MethodError, UltraViCo
    from .common import bad

    frames, _, alpha = text.partition(":")
    try:
        return UltraViCo(int(frames), float(alpha) if alpha else 0.9)
    except (ValueError, MethodError) as exc:
        bad("--ultravico", text, f"TRAIN_FRAMES[:ALPHA], an integer >= 1 and a number in [0, 1] ({exc})")


def register(app: typer.Typer) -> None:
    app.command()(generate)


def generate(
    model: str = typer.Option("bundled", "--pipeline", "--model", "-m", help="'bundled' (our small VideoDiT), tiny:wan | tiny:cogvideox | tiny:hunyuan (toy-size real pipelines, random weights), a diffusers pipeline folder, or a Hugging Face Hub id"),
    plan: Optional[Path] = typer.Option(None, "--plan", help="plan file (from `sparsevdit search`); without it attention stays dense"),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="text prompt; for the bundled model a scene class name or index (`sparsevdit classes`)"),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", help="negative prompt (diffusers pipelines)"),
    frames: Optional[int] = typer.Option(None, "--frames", callback=at_least(1), help="frames to generate (default: the plan's size, else the model's default)"),
    height: Optional[int] = typer.Option(None, "--height", callback=at_least(1), help="pixels (default: the plan's size, else the model's default)"),
    width: Optional[int] = typer.Option(None, "--width", callback=at_least(1), help="pixels (default: the plan's size, else as height / the model's default)"),
    steps: Optional[int] = typer.Option(None, "--steps", callback=at_least(1), help="denoising steps (default: the model's)"),
    guidance: Optional[float] = typer.Option(None, "--guidance", callback=finite(0), help="classifier-free guidance scale, >= 0 (default: the model's)"),
    seed: int = typer.Option(0, "--seed", callback=at_least(0), help="random seed"),
    out: Path = typer.Option(Path("out/generate/video.mp4"), "--out", "-o", callback=_check_video_out, help="video file to write (.mp4 or .gif)"),
    fps: Optional[int] = typer.Option(None, "--fps", callback=at_least(1), help="frames per second of the file (default: 8 bundled, 16 diffusers)"),
    device: str = typer.Option("auto", "--device", callback=check_device, help="cpu, cuda or auto"),
    dtype: str = typer.Option("auto", "--dtype", callback=one_of(DTYPES), help="auto (bfloat16 on GPU, float32 on CPU), float32, float16, bfloat16"),
    backend: str = typer.Option("auto", "--backend", callback=check_backend, help="attention backend for the plan's sparse layers"),
    method: Optional[str] = typer.Option(None, "--method", help="instead of a plan: a training-free method on every head (`sparsevdit methods`), e.g. radial"),
    param: List[str] = typer.Option([], "--param", "-p", help="a --method parameter key=value (JSON value), repeatable, e.g. -p dense_steps=12"),
    block_size: int = typer.Option(128, "--block-size", callback=at_least(1), help="attention block size of a --method's masks"),
    ultravico: Optional[str] = typer.Option(None, "--ultravico", help="UltraViCo for videos longer than training: TRAIN_FRAMES[:ALPHA] (latent frames the model was trained on; alpha default 0.9), on top of --plan / --method or of dense attention"),
) -> None:
    """Generate one video with a sparsity plan or a method applied (the bundled model or a diffusers pipeline)."""
    dev = resolve_device(device)
    torch_dtype = _dtype(dtype, dev)
    chosen = method_choice(method, param, plan)
    damping = _ultravico(ultravico)
    sparsity = load_plan(plan)
    common = dict(prompt=prompt, frames=frames, height=height, width=width, steps=steps, guidance=guidance, seed=seed,
                  out=out, fps=fps, device=dev, dtype=torch_dtype, backend=backend, method=chosen, block_size=block_size,
                  ultravico=damping)
    if model == "bundled":
        seconds, what = _generate_bundled(sparsity, **common)
    else:
        seconds, what = _generate_diffusers(sparsity, name=model, negative_prompt=negative_prompt, **common)
    attention = (f"method {chosen[0]} {chosen[1] or ''}".strip() if chosen else
                 "dense attention" if sparsity is None else f"plan {plan}")
    if damping is not None:
        attention += f", UltraViCo (train_frames {damping.train_frames}, alpha {damping.alpha})"
    console.print(f"{what}; {attention}; {seconds:.1f} s")
    console.print(f"wrote {out}")
