"""Writing videos and frame grids: MP4 through imageio-ffmpeg (a maintained encoder wheel), GIF, PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .atomic_files import saving


def to_uint8_frames(video: torch.Tensor, upscale: int = 1) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] to uint8 [T, H*upscale, W*upscale, 3]."""
    v = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    v = v.permute(1, 2, 3, 0)
    if upscale > 1:
        v = v.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)
    return v.cpu().numpy()


def _even(frames: np.ndarray) -> np.ndarray:
    # H.264 with yuv420p needs even sides.
    t, h, w, c = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))


def mp4_writer_available() -> bool:
    """MP4 needs the ffmpeg binary that the ``imageio-ffmpeg`` package ships; GIF needs only Pillow."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def write_video(frames: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """uint8 [T, H, W, 3] to .mp4 (H.264) or .gif, by suffix; atomically (a temp name beside it, then renamed)."""
    import imageio.v2 as imageio

    path = Path(path)
    if path.suffix not in (".mp4", ".gif"):
        raise ValueError(f"unsupported video suffix {path.suffix!r}: use .mp4 or .gif")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    # the temporary name keeps the suffix: imageio (and ffmpeg) pick the format by it
    with saving(path, suffix=f".tmp{path.suffix}") as tmp:
        if path.suffix == ".mp4":
            imageio.mimsave(tmp, list(_even(frames)), fps=fps, codec="libx264", quality=8, macro_block_size=1)
        else:
            imageio.mimsave(tmp, list(frames), duration=1000 / fps, loop=0)
    return path


def side_by_side(*videos: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate uint8 videos [T, H, W, 3] horizontally with a white gap."""
    t, h = videos[0].shape[:2]
    spacer = np.full((t, h, gap, 3), 255, dtype=np.uint8)
    parts = []
    for v in videos:
        parts += [v, spacer]
    return np.concatenate(parts[:-1], axis=2)


def frame_grid(rows: list[torch.Tensor], path: str | Path, labels: list[str] | None = None, max_frames: int = 8, upscale: int = 2) -> Path:
    """PNG with one row per video ([3, T, H, W]), ``max_frames`` evenly spaced frames each."""
    from PIL import Image, ImageDraw

    path = Path(path)
    strips = []
    for video in rows:
        frames = to_uint8_frames(video, upscale)
        idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
        pad = np.full((frames.shape[1], 2, 3), 255, np.uint8)
        strips.append(np.concatenate(sum(([frames[i], pad] for i in idx), [])[:-1], axis=1))
    label_w = 150 if labels else 0
    width = max(s.shape[1] for s in strips) + label_w
    height = sum(s.shape[0] + 2 for s in strips)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for i, strip in enumerate(strips):
        canvas.paste(Image.fromarray(strip), (label_w, y))
        if labels:
            draw.text((4, y + strip.shape[0] // 2 - 6), labels[i][:24], fill="black")
        y += strip.shape[0] + 2
    with saving(path, suffix=".tmp.png") as tmp:
        canvas.save(tmp, format="PNG")
    return path
