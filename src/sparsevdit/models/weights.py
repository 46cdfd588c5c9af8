"""Saving and loading the bundled model: fp16 safetensors shards plus a JSON config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .vdit import VDiTConfig, VideoDiT

BUNDLED_DIR = Path(__file__).parent / "weights"
SHARD_BYTES = 15 * 2**20  # shards small enough for every file-size limit we meet (transfers, hosting)


def save_weights(model: VideoDiT, folder: str | os.PathLike, *, meta: dict | None = None, dtype=torch.float16) -> list[Path]:
    """Write ``config.json`` and ``model-XXXXX.safetensors`` shards (fp16) into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("model-*.safetensors"):
        old.unlink()
    shards, current, size = [], {}, 0
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu", dtype if tensor.is_floating_point() else tensor.dtype).contiguous()
        if current and size + t.numel() * t.element_size() > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += t.numel() * t.element_size()
    shards.append(current)
    paths = []
    for i, shard in enumerate(shards):
        path = folder / f"model-{i:05d}.safetensors"
        save_file(shard, str(path))
        paths.append(path)
    (folder / "config.json").write_text(json.dumps({"config": model.cfg.to_dict(), "meta": meta or {}}, indent=1) + "\n")
    return paths


def read_config(folder: str | os.PathLike) -> VDiTConfig:
    """The model configuration saved beside a folder's weights (FileNotFoundError when there is none)."""
    config_path = Path(folder) / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(
            f"no model in {folder}: expected config.json and model-*.safetensors "
            "(train one with `sparsevdit train`, or reinstall sparsevdit for the bundled weights)"
        )
    return VDiTConfig(**json.loads(config_path.read_text())["config"])


def load_weights(folder: str | os.PathLike | None = None, *, device="cpu", dtype=torch.float32) -> VideoDiT:
    """Load a model saved by ``save_weights`` (default: the weights bundled with the package)."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else BUNDLED_DIR
    cfg = read_config(folder)
    model = VideoDiT(cfg)
    state = {}
    for shard in sorted(folder.glob("model-*.safetensors")):
        state.update(load_file(str(shard)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights in {folder} do not fit VideoDiT{cfg}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device=device, dtype=dtype).eval()


def bundled_meta() -> dict:
    path = BUNDLED_DIR / "config.json"
    return json.loads(path.read_text()).get("meta", {}) if path.exists() else {}
