"""The demo: the bundled video DiT generates the same seeds with dense and with sparse attention.

Writes dense, sparse and side-by-side videos (MP4 and GIF), a frame-grid PNG, ``report.json`` and
``report.html`` with PSNR / SSIM of sparse against dense, attention density and timings.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from . import patterns as P
from .atomic_files import building_folder, non_finite_as_null, write_json, write_text
from .dtypes import default_dtype
from .layout import TokenLayout
from .metrics import video_psnr_ssim
from .models.data import CLASSES, caption_for
from .models.vdit import SamplerConfig, VideoDiT, sample
from .models.weights import load_weights
from .plan import PlanError, SparsityPlan
from .report.attention_maps import save_attention_maps_png
from .report.fidelity_chart import save_fidelity_png
from .report.html_report import write_report_html
from .report.plan_picture import plan_step_ranges, save_plan_png, save_plan_steps_png
from .video_io import frame_grid, mp4_writer_available, side_by_side, to_uint8_frames, write_video


@dataclass
class DemoSettings:
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    seeds: tuple[int, ...]
    classes: tuple[int, ...]
    block_size: int
    backend: str
    device: str
    dtype: str
    # A first, untimed pass of each run (compilation, autotuning, caches), reported on its own.
    warmup: bool = False
    # torch.compile the model outside its attention call, identically for dense and sparse (needs warmup).
    compile: bool = False

    def __post_init__(self) -> None:
        if self.compile and not self.warmup:
            raise ValueError("compile=True needs warmup=True: otherwise compilation would be timed as sampling")


def default_settings(device: str) -> DemoSettings:
    if device == "cuda":  # the long size: 16 x 32 x 32 = 16,384 video tokens (training size: 4,096)
        return DemoSettings(16, 128, 128, 30, 3.0, (0, 1, 2, 3), (0, 2, 5, 7), 128, "auto", device, "bfloat16",
                            warmup=True)
    # 2-core CPU within about 2 minutes: 16 x 12 x 12 + 4 = 2,308 tokens (bfloat16 where the CPU has it:
    # measured 2.9x faster products than float32 on a 2-core AVX512-BF16 machine, the same PSNR)
    return DemoSettings(16, 48, 48, 16, 3.0, (0, 1), (0, 5), 64, "auto", device, default_dtype(device))


class StepClock:
    """Wall time of each denoising step: CUDA events on a GPU (read once at the end), else perf_counter."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.spans: list = []

    def start(self) -> None:
        if self.cuda:
            begin = torch.cuda.Event(enable_timing=True)
            begin.record()
            self.spans.append([begin, None])
        else:
            self.spans.append([time.perf_counter(), None])

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.spans[-1][1] = end
        else:
            self.spans[-1][1] = time.perf_counter()

    def step_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in self.spans]
        return [1000 * (b - a) for a, b in self.spans]


def _median(values: list[float]) -> float | None:
    if not values:  # a sampler that reported no steps
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


BUNDLED_PLANS = Path(__file__).parent / "models" / "plans"


def bundled_plan(model: VideoDiT, layout: TokenLayout, block_size: int, steps: int) -> SparsityPlan | None:
    """The shipped searched plan (``models/plans/*.json``) made for this model, clip size, block size and
    number of steps, or None: the demo then falls back to the fixed mix."""
    from .integrations.bundled import model_signature

    for path in sorted(BUNDLED_PLANS.glob("*.json")):
        plan = SparsityPlan.load(path)
        if plan.layout != layout or plan.block_size != block_size or plan.metadata.get("calibration", {}).get("steps", steps) != steps:
            continue
        try:
            plan.check_model(model_signature(model))
        except PlanError:
            continue
        plan.source = f"bundled {path.name}"
        return plan
    return None


def fixed_sparse_mix(model: VideoDiT, layout: TokenLayout, block_size: int) -> list[list[P.BlockPattern]]:
    """A per-head mix of the three Sparse-vDiT patterns (about 20% density), until a searched plan is given."""
    f, n = layout.tokens_per_frame, layout.video_tokens
    diag = P.build("diagonal", layout, block_size=block_size, width=3 * f)
    multi = P.build("multi_diagonal", layout, block_size=block_size, width=max(block_size, n // 5))
    stripes = P.build(
        "union", layout, block_size=block_size,
        patterns=[{"name": "diagonal", "params": {"width": 2 * f}}, {"name": "vertical_stripe", "params": {"sink_frames": 1}}],
    )
    cycle = [diag, multi, stripes]
    return [[cycle[(h + layer) % 3] for h in range(model.cfg.heads)] for layer in range(model.cfg.depth)]


def run_demo(
    out: Path,
    *,
    device: str = "auto",
    settings: DemoSettings | None = None,
    weights: str | None = None,
    plan=None,
    use_bundled_plan: bool = True,
    console: Console | None = None,
    fidelity: dict | None = None,
) -> dict:
    """Sample ``settings``' seeds dense and sparse, write the videos and the report into ``out``.

    ``fidelity``: a fidelity study (the JSON of ``sparsevdit fidelity``) whose PSNR-vs-density and
    PSNR-vs-time curves the report shows."""
    console = console or Console()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    s = settings or default_settings(device)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    dtype = getattr(torch, s.dtype)
    model = load_weights(weights, device=device, dtype=dtype)
    layout = model.cfg.layout(s.frames, s.height, s.width)
    bad_classes = [c for c in s.classes if not 0 <= c < model.cfg.num_classes]
    if bad_classes or len(s.classes) != len(s.seeds):
        raise ValueError(f"classes {list(s.classes)}: give one per seed ({len(s.seeds)}), each in 0..{model.cfg.num_classes - 1}")
    classes = torch.tensor(s.classes, device=device)
    sampler = SamplerConfig(steps=s.steps, guidance=s.guidance)

    if plan is None and use_bundled_plan:
        plan = bundled_plan(model, layout, s.block_size, s.steps)
    if plan is not None:
        from .integrations.bundled import check_layout, model_signature, plan_patterns

        # Refuse a plan for another model or clip size now, not after the whole dense run.
        plan.check_model(model_signature(model))
        check_layout(plan, model, layout)

        per_layer = lambda step: plan_patterns(plan, model, layout, step)  # noqa: E731
        sparse_label = f"plan {getattr(plan, 'source', '')}".strip()
    else:
        mix = fixed_sparse_mix(model, layout, s.block_size)
        per_layer = lambda step: mix  # noqa: E731
        sparse_label = "fixed per-head mix (diagonal / multi_diagonal / diagonal+stripes)"

    def density_at(step: int) -> float:
        layers = per_layer(step)
        vals = [1.0 if pats is None else sum(p.density for p in pats) / len(pats) for pats in layers]
        return sum(vals) / len(vals)

    console.print(f"model: bundled VideoDiT ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M), {layout}, {device}")
    if s.compile:
        model.compile_outside_attention()

    def run(name: str, progress, label: str):
        """One sampling of every seed; returns the videos, seconds and per-step milliseconds."""
        task = progress.add_task(f"{label:14s}", total=s.steps)
        clock = StepClock(device)
        if name == "dense":
            model.clear_patterns()
            set_step = None
        else:
            def set_step(step):
                model.set_patterns(per_layer(step), backend=s.backend)

        def before(step):
            current["step"] = step
            clock.start()  # setting a step's patterns is part of that step's time
            if set_step is not None:
                set_step(step)

        def after():
            clock.stop()
            progress.advance(task)

        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        video = sample(model, classes, frames=s.frames, height=s.height, width=s.width, seeds=list(s.seeds),
                       sampler=sampler, on_step=before, progress=after)
        if device == "cuda":
            torch.cuda.synchronize()
        return video.cpu(), time.perf_counter() - t0, clock.step_ms()

    # q/k of a few layers at the middle step of the first dense pass (the warm-up on a GPU: untimed),
    # first seed, conditional half: the report's attention maps of dense vs sparse
    map_step, map_layers = s.steps // 2, sorted({0, model.cfg.depth // 2, model.cfg.depth - 1})
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    current = {"step": -1}

    def capture_for(layer):
        def capture(q, k, v):
            if current["step"] == map_step and layer not in captured:
                captured[layer] = (q[0].float().cpu(), k[0].float().cpu())
        return capture

    results, warmup = {}, {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TimeElapsedColumn(), console=console) as progress:
        attention = model.attention_modules()
        for layer in map_layers:
            # outside any compiled graph: traced, its step test became a guard and recompiled every step
            attention[layer].capture = torch.compiler.disable(capture_for(layer))
        try:
            if s.warmup:
                for name in ("dense", "sparse"):
                    warmup[name] = run(name, progress, f"warm-up {name}")[1]
                    if name == "dense":
                        _stop_capture(model)
            for name in ("dense", "sparse"):
                results[name] = run(name, progress, f"{name} attention")
                _stop_capture(model)
        finally:
            _stop_capture(model)
    model.clear_patterns()

    dense, dense_s, dense_ms = results["dense"]
    sparse, sparse_s, sparse_ms = results["sparse"]
    timing = {name: {"seconds": results[name][1], "step_ms": results[name][2],
                     "median_step_ms": _median(results[name][2]),
                     **({"warmup_seconds": warmup[name]} if name in warmup else {})} for name in ("dense", "sparse")}
    medians = timing["dense"]["median_step_ms"], timing["sparse"]["median_step_ms"]
    timing["speedup_per_step"] = medians[0] / medians[1] if None not in medians else None
    timing["speedup_total"] = dense_s / sparse_s
    timing["compiled"] = s.compile
    per_seed = [video_psnr_ssim(sparse[i], dense[i]) for i in range(len(s.seeds))]
    quality = video_psnr_ssim(sparse, dense)
    density = sum(density_at(i) for i in range(s.steps)) / s.steps

    upscale = max(1, 256 // s.width)
    exts = ("mp4", "gif") if mp4_writer_available() else ("gif",)
    if exts == ("gif",):
        console.print("imageio-ffmpeg is not installed: writing GIFs only (pip install imageio-ffmpeg for MP4)")
    report = {
        "psnr": quality["psnr"], "ssim": quality["ssim"],
        "per_seed": [{"seed": seed, "class": CLASSES[c], "caption": caption_for(c), **q}
                     for seed, c, q in zip(s.seeds, s.classes, per_seed)],
        "attention_density": density, "sparse_config": sparse_label,
        "dense_seconds": dense_s, "sparse_seconds": sparse_s, "timing": timing,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "settings": {**asdict(s), "layout": layout.to_dict(), "tokens": layout.num_tokens},
        "files": [],
    }
    # Everything is written into a temporary folder that moves into ``out`` at the end: an interrupted
    # run leaves neither half-written files nor new videos beside an old report.
    with building_folder(out) as tmp:
        report["files"] = write_outputs(tmp, dense, sparse, s, exts, upscale)
        with console.status("drawing the plan and attention maps"):
            report["pictures"] = write_pictures(tmp, plan, layout, captured, per_layer(map_step), map_step, model.cfg.heads)
            if fidelity is not None:
                report["pictures"]["fidelity"] = save_fidelity_png(fidelity, tmp / "fidelity.png", x="density").name
                report["pictures"]["fidelity_time"] = save_fidelity_png(fidelity, tmp / "fidelity_time.png", x="time").name
        report["files"] += sorted(set(report["pictures"].values()) - set(report["files"]))
        write_json(tmp / "report.json", non_finite_as_null(report))  # PSNR inf: sparse equals dense
        write_report_html(tmp, report)
    files = report["files"]
    console.print(
        f"PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.4f} (sparse vs dense), attention density {density:.1%}; "
        f"dense {dense_s:.1f} s, sparse {sparse_s:.1f} s"
        + (f"; per step (median) dense {medians[0]:.1f} ms, sparse {medians[1]:.1f} ms: {timing['speedup_per_step']:.2f}x"
           if None not in medians else "")
        + (f"; warm-up (not timed) dense {warmup['dense']:.1f} s, sparse {warmup['sparse']:.1f} s" if warmup else "")
    )
    videos = [f for f in files if f.endswith((".mp4", ".gif"))]
    pictures = [f for f in files if f.endswith(".png")]
    console.print(f"wrote {out}/report.html, report.json, {len(videos)} videos and {len(pictures)} pictures ({', '.join(pictures)})")
    return report


def write_outputs(folder: Path, dense: torch.Tensor, sparse: torch.Tensor, s: DemoSettings, exts: tuple[str, ...],
                  upscale: int) -> list[str]:
    """The videos (dense, sparse, side by side per seed) and the frame grid; returns their file names."""
    files = []
    for i, seed in enumerate(s.seeds):
        d, sp = to_uint8_frames(dense[i], upscale), to_uint8_frames(sparse[i], upscale)
        for name, frames in (("dense", d), ("sparse", sp), ("side_by_side", side_by_side(d, sp))):
            for ext in exts:
                files.append(write_video(frames, folder / f"seed{seed}_{name}.{ext}").name)
    rows, labels = [], []
    for i, seed in enumerate(s.seeds):
        rows += [dense[i], sparse[i]]
        labels += [f"seed {seed} dense", f"seed {seed} sparse"]
    files.append(frame_grid(rows, folder / "frames.png", labels).name)
    return files


def _stop_capture(model: VideoDiT) -> None:
    for attn in model.attention_modules():
        attn.capture = None


def write_pictures(folder: Path, plan: SparsityPlan | None, layout: TokenLayout, captured: dict, patterns_at_step,
                   step: int, heads: int) -> dict[str, str]:
    """The plan as a picture (a plan only; the fixed mix has none) and dense-vs-sparse attention maps."""
    pictures = {}
    if plan is not None:
        several = len(plan_step_ranges(plan)) > 1
        path = (save_plan_steps_png(plan, folder / "plan.png") if several
                else save_plan_png(plan, folder / "plan.png", step=0))
        pictures["plan"] = path.name
    if captured:
        layers = sorted(captured)
        pairs = [(layer, h) for layer in layers for h in sorted({0, heads - 1})]
        path = save_attention_maps_png(
            {layer: captured[layer][0] for layer in layers}, {layer: captured[layer][1] for layer in layers},
            {layer: patterns_at_step[layer] for layer in layers}, layout, folder / "attention_maps.png", heads=pairs,
            title=f"attention at step {step + 1}: dense map | blocks the sparse run keeps (seed's first sample)")
        pictures["attention_maps"] = path.name
    return pictures
