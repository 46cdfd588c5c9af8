"""``sparsevdit demo``: the bundled model generates the same seeds with dense and sparse attention."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import (at_least, bad, check_backend, check_device, check_out_folder, check_pixels, console,
                     int_list, load_plan, model_config, resolve_device, method_choice)


def load_fidelity(path: Path) -> dict:
    """A fidelity study's JSON: an object with a list of rows, each with a method, density and PSNR."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        bad("--fidelity", str(path), f"a JSON file written by `sparsevdit fidelity` ({e})")
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows or not all(
            isinstance(r, dict) and {"method", "density", "psnr"} <= set(r) for r in rows):
        bad("--fidelity", str(path), "a fidelity study: an object whose 'rows' list has method, density and psnr in each row")
    return data


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("out/demo"), "--out", "-o", callback=check_out_folder, help="folder for the videos and the report"),
        device: str = typer.Option("auto", callback=check_device, help="cpu, cuda or auto"),
        weights: Optional[Path] = typer.Option(None, help="model folder (config.json + safetensors); default: the bundled model"),
        frames: Optional[int] = typer.Option(None, callback=at_least(1), help="frames to generate (default: 16)"),
        height: Optional[int] = typer.Option(None, callback=at_least(1), help="pixels, a multiple of the patch size 4 (default: 48 on CPU, 128 on GPU)"),
        width: Optional[int] = typer.Option(None, callback=at_least(1), help="pixels, a multiple of the patch size 4 (default: as height)"),
        steps: Optional[int] = typer.Option(None, callback=at_least(1), help="denoising steps (default: 16 on CPU, 30 on GPU)"),
        seeds: Optional[str] = typer.Option(None, help="comma list of seeds (integers >= 0), e.g. 0,1"),
        classes: Optional[str] = typer.Option(None, help="comma list of scene class indices, one per seed (default: seed % number of classes; see `sparsevdit classes`)"),
        block_size: Optional[int] = typer.Option(None, callback=at_least(1), help="attention block size (default: 64 on CPU, 128 on GPU)"),
        backend: str = typer.Option("auto", callback=check_backend, help="attention backend for the sparse run"),
        plan: Optional[Path] = typer.Option(None, "--plan", help="sparse run uses this plan file (from `sparsevdit search`); its layout must match the clip size"),
        fixed_mix: bool = typer.Option(False, "--fixed-mix", help="use the fixed per-head mix even where a bundled searched plan fits the clip size"),
        warmup: Optional[bool] = typer.Option(None, "--warmup/--no-warmup", help="sample once untimed first (compilation, autotuning), reported on its own (default: on for GPU, off for CPU)"),
        fidelity: Optional[Path] = typer.Option(None, "--fidelity", exists=True, dir_okay=False, help="a fidelity study JSON (`sparsevdit fidelity --out ...`, e.g. bench/results/fidelity-cpu.json): the report draws its PSNR vs density and vs time"),
        compile: bool = typer.Option(False, "--compile", help="torch.compile the model outside its attention, the same for dense and sparse (implies --warmup)"),
        method: Optional[str] = typer.Option(None, "--method", help="sparse run: a training-free method on every head instead of a plan (`sparsevdit methods`), e.g. sliding_tile"),
        param: List[str] = typer.Option([], "--param", "-p", help="a --method parameter key=value (JSON value), repeatable, e.g. -p window=[3,3,3]"),
        dtype: str = typer.Option("auto", help="compute dtype of both runs: float32, bfloat16, or auto (bfloat16 on GPU, and on a CPU that measures it faster than float32)"),
    ) -> None:
        """Generate the same seeds with dense and sparse attention on the bundled model; write videos and a report.

        The sparse run uses, in order: --plan; the searched plan shipped for the default CPU size
        (sparsevdit/models/plans/); else a fixed per-head mix of diagonal / multi-diagonal / stripe heads.
        """
        from dataclasses import replace

        from ..demo import default_settings, run_demo

        cfg = model_config(weights)
        check_pixels(cfg, frames=frames, height=height, width=width)
        seed_list = int_list(seeds, "--seeds", low=0)
        class_list = int_list(classes, "--classes", low=0, high=cfg.num_classes - 1,
                              what=f"the model's {cfg.num_classes} classes")
        dev = resolve_device(device)
        s = default_settings(dev)
        changes = {k: v for k, v in dict(frames=frames, height=height, width=width or height, steps=steps,
                                         block_size=block_size).items() if v is not None}
        if seed_list is not None:
            changes["seeds"] = seed_list
        if class_list is not None:
            changes["classes"] = class_list
        if compile and warmup is False:
            bad("--no-warmup", False, "--compile needs the warm-up pass (else compilation is timed); drop --no-warmup")
        changes["warmup"] = compile or (s.warmup if warmup is None else warmup)  # --compile implies the warm-up
        if dtype not in ("auto", "float32", "bfloat16"):
            bad("--dtype", dtype, "auto, float32 or bfloat16")
        if dtype != "auto":
            changes["dtype"] = dtype
        s = replace(s, backend=backend, compile=compile, **changes)
        if class_list is None and len(s.classes) != len(s.seeds):  # seeds given without classes
            s = replace(s, classes=tuple(seed % cfg.num_classes for seed in s.seeds))
        if len(s.classes) != len(s.seeds):
            bad("--classes", classes, f"one class per seed ({len(s.seeds)} seeds)")
        chosen = method_choice(method, param, plan)
        if chosen is not None and fixed_mix:
            bad("--fixed-mix", True, "either --fixed-mix or --method")
        loaded = load_plan(plan)
        if chosen is not None:
            from ..integrations.bundled import config_signature
            from ..plan import PlanError, SparsityPlan

            try:
                loaded = SparsityPlan.for_method(config_signature(cfg),
                                                 cfg.layout(s.frames, s.height, s.width), chosen[0], chosen[1],
                                                 block_size=s.block_size)
            except PlanError as exc:
                bad("--param", " ".join(param) or chosen[0], f"parameters method {chosen[0]!r} can build masks of this clip with ({exc})")
            loaded.source = f"method {chosen[0]} {chosen[1] or ''}".strip()
        study = load_fidelity(fidelity) if fidelity is not None else None
        # run_demo checks the plan against the model and the clip size before it samples anything.
        run_demo(out, device=dev, settings=s, weights=weights, plan=loaded, use_bundled_plan=not fixed_mix, console=console,
                 fidelity=study)
