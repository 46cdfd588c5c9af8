"""``--pipeline`` for the commands that run a model: ``bundled``, ``tiny:wan|tiny:cogvideox|tiny:hunyuan``
(real diffusers pipelines at toy size, random weights, built offline), or a diffusers pipeline folder /
Hugging Face Hub id, loaded with ``DiffusionPipeline.from_pretrained(..., local_files_only=True)``
first (no network needed when the files are on disk or in the cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .common import bad, fail

TINY_PREFIX = "tiny:"


def is_bundled(name: str) -> bool:
    return name == "bundled"


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def load_pipeline(name: str, dtype, *, option: str = "--pipeline"):
    """A diffusers pipeline from ``tiny:FAMILY``, a folder or a Hub id; a one-line error naming what is
    missing and how to get it otherwise."""
    if name.startswith(TINY_PREFIX):
        from ..integrations import tiny_pipelines

        family = name[len(TINY_PREFIX):]
        if family not in tiny_pipelines.FAMILIES:
            bad(option, name, "tiny:" + " | tiny:".join(tiny_pipelines.FAMILIES))
        try:
            pipe = tiny_pipelines.build(family)
        except ImportError as exc:
            fail(str(exc))
        return pipe.to(dtype=dtype) if dtype is not None else pipe
    try:
        from diffusers import DiffusionPipeline
    except ImportError:
        fail("running a diffusers model needs the diffusers package: pip install diffusers")
    path = Path(name).expanduser()
    if not path.exists() and _looks_like_path(name):
        fail(f"no diffusers pipeline at {path}: the folder does not exist (download the weights there first)")
    if path.exists() and not (path / "model_index.json").exists():
        fail(f"{path} is not a diffusers pipeline folder: it has no model_index.json")
    source = str(path) if path.exists() else name
    first_error = None
    for local_only in (True, False):  # the files on disk first; the Hub only if they are not there
        try:
            return DiffusionPipeline.from_pretrained(source, torch_dtype=dtype, local_files_only=local_only)
        except Exception as exc:  # noqa: BLE001 - loading fails in many ways; all end in the same advice
            first_error = first_error or exc
            if path.exists():
                break
    text = str(first_error).strip()
    first = text.splitlines()[0] if text else type(first_error).__name__
    where = f"the folder {path}" if path.exists() else f"{name!r} (not a folder on disk, not in the local cache, and the Hub download failed)"
    fail(f"could not load a diffusers pipeline from {where}: {first}. "
         f"Put the weights on disk (e.g. `huggingface-cli download {name} --local-dir DIR`) and pass {option} DIR.")


def read_prompts(prompts_file: Optional[Path], prompt: Optional[str]) -> tuple[str, ...]:
    """``--prompts FILE`` (one prompt per line; blank lines and lines starting with # skipped) and/or ``--prompt``."""
    found = []
    if prompts_file is not None:
        if not prompts_file.is_file():
            bad("--prompts", str(prompts_file), "a text file with one prompt per line")
        try:
            lines = prompts_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            bad("--prompts", str(prompts_file), f"a readable UTF-8 text file ({exc})")
        found = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not found:
            bad("--prompts", str(prompts_file), "a file holding at least one prompt (one per line)")
    if prompt is not None:
        if not prompt.strip():
            bad("--prompt", prompt, "a non-empty prompt")
        found.append(prompt.strip())
    return tuple(found)


def pipeline_runner(name: str, *, device: str, prompts, negative_prompt, seeds, frames, height, width, steps,
                    guidance, block_size, backend, compare: str = "video"):
    """The search runner of ``--pipeline NAME`` with its calibration run, every option checked."""
    import torch

    from ..search.runners import RunnerError, as_runner
    from ..search.runners.pipeline import PipelineCalibration

    tiny = name.startswith(TINY_PREFIX)
    if not prompts:
        if not tiny:
            bad("--prompts", None, "calibration prompts for a diffusers pipeline: --prompts FILE (one per line) or --prompt TEXT")
        prompts = ("a red ball bounces on the grass", "a small boat on a calm sea at sunset")
    defaults = {}
    if tiny:
        from ..integrations.tiny_pipelines import TINY_CALL, TINY_SIZES

        family = name[len(TINY_PREFIX):]
        size = TINY_SIZES.get(family, {})
        defaults = {"frames": size.get("frames"), "height": size.get("height"), "width": size.get("width"),
                    "steps": 4, "block_size": 16, "max_sequence_length": size.get("max_sequence_length"),
                    "call": dict(TINY_CALL.get(family, {}))}
    else:
        for option, value in (("--frames", frames), ("--height", height)):
            if value is None:
                bad(option, None, "the calibration video's size for a diffusers pipeline (e.g. --frames 81 --height 480 "
                                   "--width 832 for Wan2.1 480p)")
    dev = device
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    pipe = load_pipeline(name, dtype)
    pipe.to(dev)
    try:
        calib = PipelineCalibration(
            prompts=tuple(prompts), negative_prompt=negative_prompt, seeds=tuple(seeds or (0,)),
            frames=frames or defaults.get("frames"), height=height or defaults.get("height"),
            width=width or height or defaults.get("width"), steps=steps or defaults.get("steps", 50),
            guidance=guidance, block_size=block_size or defaults.get("block_size", 128), backend=backend,
            max_sequence_length=defaults.get("max_sequence_length"), call=defaults.get("call", {}), output=compare)
        return as_runner(pipe, calib)
    except RunnerError as exc:
        fail(str(exc))
