"""Fidelity study on the bundled model: PSNR / SSIM of sparse vs dense video against attention density.

Searches calibrate on ``calib_seeds``; every method is measured on held-out ``eval_seeds`` (never used
by a search): the video sampled with the method's attention against the dense video of the same
seeds. Methods: ``sparse-vdit`` (several lambda / epsilon), ``budget`` (several predicted-time budgets,
target PSNRs found by bisection on the calibration seeds, a per-layer error budget), uniform baselines (every
head diagonal / multi_diagonal at several widths) and SVG's online per-head spatial / temporal choice.
Density is the mean over steps, layers and heads of the attention density actually run; predicted
time is the cost model's relative attention time (FLOP estimate, and the H100 kernel table). With
``measure_time`` (the default on a GPU) every video is sampled twice and the second, warm run is
timed: ``relative_time_measured`` is its wall-clock over the warm dense run's, in the same process
(the first run pays compilation, autotuning and pattern building).

``grid`` replaces the default settings per method (``check_grid``; the CLI's ``--grid``), and
``plans_dir`` receives every evaluated plan. The searches run first and the baselines after, so a
run stopped by a time limit keeps the comparison it is for.
"""

from __future__ import annotations

import datetime as _dt
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..integrations.bundled import model_signature as plan_signature
from ..metrics import video_psnr_ssim
from ..methods import get_method
from ..plan import SparsityPlan
from .baselines import uniform_plan
from .budget import BudgetSettings, budget_search, layer_sensitivity, step_sensitivity
from .candidates import band_width
from .common import CalibrationConfig, sample_video
from .cost import CostModel
from .profile import run_profile
from .sparse_vdit import SparseVDiTSettings, sparse_vdit_search
from ..atomic_files import finite_or_none as _finite

FULL = {
    "uniform_densities": (0.1, 0.2, 0.3, 0.5),
    # the svg method: (its sparsity, the kept fraction of each band; fraction of steps dense first)
    "svg": ((0.1, 0), (0.2, 0), (0.3, 0), (0.2, 0.25)),
    "sparse_vdit": ((0.5, 1.0), (0.05, 0.02), (0.01, 0.01), (0.004, 0.004), (0.002, 0.003)),  # (lambda, epsilon)
    # budget settings (BudgetSettings fields); with layer_sensitivity / step_sensitivity the weights are
    # measured once per kind (reference plan at predicted time 0.3) and the row is "budget+sens"
    "budget": ({"max_time": 0.1}, {"max_time": 0.2}, {"max_time": 0.3}, {"max_time": 0.5}, {"max_time": 0.55},
               {"max_time": 0.7},
               {"max_time": 0.9}, {"max_time": 0.98}, {"target_psnr": 20.0}, {"target_psnr": 25.0}, {"target_psnr": 30.0},
               {"max_rel_error": 0.1}, {"max_time": 0.3, "step_ranges": 1}),
    # budget with per-layer sensitivities (max_time values; shorthand for budget entries with layer_sensitivity)
    "budget_sensitivity": (0.1, 0.2, 0.3, 0.5, 0.7),
    # training-free methods (``sparsevdit methods``) on every head: {"method", "params", "dense_fraction"}, the
    # last (optional) the fraction of the steps run dense first (the methods' own dense_steps, per step count)
    "methods": ({"method": "radial"}, {"method": "radial", "dense_fraction": 0.25},
                {"method": "sliding_tile", "params": {"tile": [2, 8, 8], "window": [3, 3, 3]}},
                {"method": "sliding_tile", "params": {"tile": [2, 8, 8], "window": [5, 3, 3]}},
                {"method": "sliding_tile", "params": {"tile": [2, 8, 8], "window": [3, 3, 3]}, "dense_fraction": 0.25},
                {"method": "topk", "params": {"tau": 0.9}}, {"method": "topk", "params": {"tau": None, "fraction": 0.2}},
                {"method": "topk", "params": {"tau": None, "fraction": 0.2, "reuse_every": 5}},
                {"method": "svg", "params": {"sparsity": 0.2, "reuse_every": 5}}),
}
METHOD_ENTRY_KEYS = ("method", "params", "dense_fraction")
GRID_KEYS = tuple(FULL)


def check_grid(grid: dict) -> dict:
    """A fidelity grid override (``--grid``): known keys, lists of the right kind; ValueError naming the problem."""
    if not isinstance(grid, dict):
        raise ValueError(f"a fidelity grid is a JSON object with keys among {list(GRID_KEYS)}, got {type(grid).__name__}")
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise ValueError(f"unknown fidelity grid keys {unknown}; known: {list(GRID_KEYS)}")
    out = {}
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"grid {key!r}: a list, got {values!r}")
        if key == "budget":
            for opts in values:
                if not isinstance(opts, dict):
                    raise ValueError(f"grid 'budget': each entry is an object of budget settings, got {opts!r}")
                BudgetSettings(**opts)  # refuses unknown fields and bad budgets with its own message
            out[key] = tuple(dict(o) for o in values)
        elif key == "methods":
            out[key] = tuple(_check_method_entry(e) for e in values)
        elif key in ("svg", "sparse_vdit"):
            if not all(isinstance(v, (list, tuple)) and len(v) == 2 for v in values):
                shape = ("[sparsity (the kept fraction of each band), fraction of steps dense first]" if key == "svg"
                         else "[lambda, epsilon]")
                raise ValueError(f"grid {key!r}: a list of pairs {shape}, got {values!r}")
            out[key] = tuple((float(a), float(b)) for a, b in values)
            if key == "svg":
                from ..methods import MethodError, parse_params

                for sparsity, warm in out[key]:
                    try:
                        parse_params("svg", {"sparsity": sparsity})
                    except MethodError as exc:
                        raise ValueError(f"grid 'svg': {exc}") from None
                    if not 0 <= warm <= 1:
                        raise ValueError(f"grid 'svg': the fraction of steps dense first is in [0, 1], got {warm!r}")
        else:
            out[key] = tuple(float(v) for v in values)
    return out


def _check_method_entry(entry) -> dict:
    from ..methods import MethodError, parse_params

    if not isinstance(entry, dict) or "method" not in entry or set(entry) - set(METHOD_ENTRY_KEYS):
        raise ValueError(f"grid 'methods': each entry is an object with keys among {list(METHOD_ENTRY_KEYS)} "
                         f"('method' required), got {entry!r}")
    try:
        parse_params(entry["method"], entry.get("params") or {})
    except (MethodError, TypeError) as exc:
        raise ValueError(f"grid 'methods': {exc}") from None
    frac = entry.get("dense_fraction", 0.0)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
        raise ValueError(f"grid 'methods': dense_fraction is a fraction of the steps in [0, 1], got {frac!r}")
    return {"method": entry["method"], "params": dict(entry.get("params") or {}), "dense_fraction": float(frac)}


QUICK = {
    "uniform_densities": (0.2,),
    "svg": ((0.2, 0),),
    "sparse_vdit": ((0.5, 1.0),),
    "budget": ({"max_time": 0.3}, {"target_psnr": 20.0}),
    "budget_sensitivity": (0.3,),
    "methods": ({"method": "radial", "params": {}, "dense_fraction": 0.0},),
}


def run_fidelity(model, *, out: Path | None, plot: Path | None, frames: int = 16, height: int = 32, width: int = 32,
                 steps: int = 12, block_size: int = 32, calib_seeds=(100, 101, 102, 103, 104, 105), eval_seeds=(0, 1, 2, 3),
                 rows_per_block: int = 4, bisection_steps: int = 4, quick: bool = False, grid: dict | None = None,
                 measure_time: bool | None = None, plans_dir: Path | None = None, console=None) -> dict:
    log = console.print if console is not None else print
    cuda = next(model.parameters()).device.type == "cuda"
    measure_time = cuda if measure_time is None else measure_time

    def timed(run):
        """``run()``'s result and seconds: of a second, warm call when measuring time, else of the only one."""
        if measure_time:
            run()
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        result = run()
        if cuda:
            torch.cuda.synchronize()
        return result, time.perf_counter() - t

    grid = {**(QUICK if quick else FULL), **check_grid(grid or {})}
    for opts in grid["budget"]:
        seen = sorted(set(opts.get("psnr_seeds", ())) & set(eval_seeds))
        if seen:
            raise ValueError(f"grid 'budget': psnr_seeds {seen} are held-out seeds too (eval seeds {list(eval_seeds)}): "
                             "a search must never see the seeds it is judged on; pick others")
    t_start = time.perf_counter()
    nc = model.cfg.num_classes
    calib = CalibrationConfig(seeds=tuple(calib_seeds), classes=tuple(s % nc for s in calib_seeds), frames=frames,
                              height=height, width=width, steps=steps, block_size=block_size, backend="auto")
    evalc = replace(calib, seeds=tuple(eval_seeds), classes=tuple((s * 4 + 1) % nc for s in eval_seeds))
    layout = calib.layout(model)
    cost_f = CostModel.flops()
    cost_m = CostModel.measured(shape="wan1.3b")  # relative times of the H100 table
    dense, dense_seconds = timed(lambda: sample_video(model, evalc))
    log(f"dense on held-out seeds {list(eval_seeds)}: {dense_seconds:.1f} s{' (warm)' if measure_time else ''} "
        f"({layout}, {steps} steps)")
    rows: list[dict] = []

    def record(method, label, video, density, rel_f, rel_m, extra=None, search_s=None, eval_s=None):
        q = video_psnr_ssim(video, dense)
        per_seed = [video_psnr_ssim(video[i], dense[i])["psnr"] for i in range(video.shape[0])]
        row = {"method": method, "label": label, "density": density, "relative_time_flops": rel_f,
               "relative_time_h100": rel_m, "psnr": _finite(q["psnr"]), "ssim": q["ssim"],
               "psnr_per_seed": [_finite(p) for p in per_seed],
               "ssim_per_seed": [video_psnr_ssim(video[i], dense[i])["ssim"] for i in range(video.shape[0])],
               "search_seconds": search_s, "eval_seconds": eval_s,
               **({"relative_time_measured": eval_s / dense_seconds} if measure_time else {}), **(extra or {})}
        rows.append(row)
        measured = f"  time(measured) {row['relative_time_measured']:.3f}" if measure_time else ""
        log(f"  {method:12s} {label:34s} density {density:6.1%}  time(flops) {rel_f:.3f}{measured}  "
            f"PSNR {q['psnr']:6.2f} dB  SSIM {q['ssim']:.4f}")
        if out is not None:
            _write(out, _result(rows, calib, evalc, layout, dense_seconds, t_start, cost_f, cost_m, measure_time))

    def eval_plan(method, label, plan, extra=None, search_s=None):
        if plans_dir is not None:
            plan.save(Path(plans_dir) / f"{len(rows):02d}-{method}-{_slug(label)}.json")
        video, eval_s = timed(lambda: sample_video(model, evalc, plan=plan))
        pf, pm = cost_f.plan_time(plan, steps), cost_m.plan_time(plan, steps)
        record(method, label, video, pf["density"], pf["relative_time"], pm["relative_time"], extra, search_s, eval_s)

    def eval_dynamic(method, label, params):
        """A dynamic method applied to the model; density and predicted time from what its calls ran."""
        from ..integrations import apply, remove
        from ..methods.dynamic import as_patterns

        apply(model, method=method, block_size=block_size, **params)
        try:
            dyn = model._sparsevdit_plan_state.methods.dynamic
            video, eval_s = timed(lambda: sample_video(model, evalc))
            ran = [as_patterns(x) for x in dyn.history[-steps * model.cfg.depth:]] or [None]  # the timed sampling's
        finally:
            remove(model)
        dens = sum(1.0 if p is None else sum(x.density for x in p) / len(p) for p in ran) / len(ran)
        rel_f = sum(cost_f.layer_time(p) for p in ran) / len(ran)
        rel_m = sum(cost_m.layer_time(p) for p in ran) / len(ran)
        extra = {"params": params, "selections": dyn.selections}
        heads = [x for p in ran if p is not None for x in p]
        if method == "svg" and heads:  # its choice: spatial heads attend in frame-major order, temporal ones not
            extra["spatial_fraction"] = sum(x.ordering == "frame_major" for x in heads) / len(heads)
        record(method, label, video, dens, rel_f, rel_m, extra, None, eval_s)

    # the searches first (the comparison the study is for), the baselines after: a run cut short keeps them
    # profile --------------------------------------------------------------------------------------
    prof, profile_s = None, 0.0
    if grid["sparse_vdit"] or grid["budget"] or grid["budget_sensitivity"]:  # the searches' input, only for them
        t = time.perf_counter()
        prof = run_profile(model, calib, rows_per_block=rows_per_block, console=console, progress=False)
        profile_s = time.perf_counter() - t
        log(f"profile on calibration seeds {list(calib_seeds)}: {profile_s:.0f} s, {len(prof.candidates)} candidates")
    # sparse-vdit ----------------------------------------------------------------------------------
    for lam, eps in grid["sparse_vdit"]:
        t = time.perf_counter()
        plan = sparse_vdit_search(model, calib, SparseVDiTSettings(lam=lam, epsilon=eps, rows_per_block=rows_per_block),
                                  cost=cost_f, dense_video=prof.dense_video, progress=False)
        search_s = time.perf_counter() - t
        md = plan.metadata
        eval_plan("sparse-vdit", f"lambda={lam}, epsilon={eps}", plan,
                  {"settings": {"lam": lam, "epsilon": eps}, "mode_fractions": md["mode_fractions"],
                   "calibration_psnr": md["calibration_psnr"]}, search_s)

    # budget ---------------------------------------------------------------------------------------
    cache: dict = {}
    sensitivities: dict = {}  # "layer" / "step" -> (weights, seconds), each measured once (reference time 0.3)

    def sensitivity_for(opts: dict):
        kinds = [k for k in ("layer", "step") if opts.get(f"{k}_sensitivity")]
        for kind in kinds:
            if kind not in sensitivities:
                t = time.perf_counter()
                probe = BudgetSettings(max_time=0.3, step_groups=opts.get("step_groups", 5),
                                       dense_warmup_steps=opts.get("dense_warmup_steps", 0))
                measure = layer_sensitivity if kind == "layer" else step_sensitivity
                sensitivities[kind] = (measure(prof, cost_f, probe, model, reference_time=0.3), time.perf_counter() - t)
                log(f"{kind} sensitivities (reference plan at time 0.3): "
                    f"{[round(float(x), 3) for x in sensitivities[kind][0]]}, {sensitivities[kind][1]:.0f} s")
        if not kinds:
            return None, 0.0
        weight = torch.ones(prof.steps, prof.num_layers)
        if "layer" in kinds:
            weight = weight * sensitivities["layer"][0][None, :]
        if "step" in kinds:
            weight = weight * sensitivities["step"][0][:, None]
        return weight, sum(sensitivities[k][1] for k in kinds)

    budget_runs = list(grid["budget"]) + [{"max_time": t, "layer_sensitivity": True} for t in grid["budget_sensitivity"]]
    for opts in budget_runs:
        sens, sens_s = sensitivity_for(opts)
        t = time.perf_counter()
        plan = budget_search(prof, cost_f, BudgetSettings(bisection_steps=bisection_steps, **opts), model=model, cache=cache,
                             sensitivity=sens)
        search_s = time.perf_counter() - t + profile_s + sens_s
        label = ", ".join(f"{k}={v}" for k, v in opts.items())
        md = plan.metadata
        eval_plan(_budget_method(opts), label, plan,
                  {"settings": opts, "mu": md["mu"], "calibration_psnr": md["calibration_psnr"],
                   "expected_rel_error": md["expected_rel_error"], "layer_sensitivity": md["layer_sensitivity"],
                   "step_sensitivity": md["step_sensitivity"]}, search_s)

    # uniform baselines ----------------------------------------------------------------------------
    for name, short in (("diagonal", "diag"), ("multi_diagonal", "multi")):
        for d in grid["uniform_densities"]:
            w = band_width(name, layout, block_size, d)
            eval_plan(f"uniform-{short}", f"{name} width={w}", uniform_plan(model, calib, name, width=w), {"width": w})

    # training-free methods ------------------------------------------------------------------------
    for entry in grid["methods"]:
        params = dict(entry["params"])
        if entry["dense_fraction"]:
            params["dense_steps"] = round(entry["dense_fraction"] * steps)
        label = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
        if get_method(entry["method"]).is_dynamic():
            eval_dynamic(entry["method"], label, params)
            continue
        plan = SparsityPlan.for_method(plan_signature(model), layout, entry["method"], params, block_size=block_size)
        eval_plan(entry["method"], label, plan, {"params": params})

    # SVG: the svg method (its released masks, its per-head online choice) ------------------------------
    for sparsity, warm in grid["svg"]:
        params = {"sparsity": sparsity, "dense_steps": round(warm * steps)}
        label = f"sparsity={sparsity:g}" + (f", {params['dense_steps']} dense steps" if params["dense_steps"] else "")
        eval_dynamic("svg", label, params)

    result = _result(rows, calib, evalc, layout, dense_seconds, t_start, cost_f, cost_m, measure_time)
    if out is not None:
        _write(out, result)
    if plot is not None:
        plot_results(result, plot)
    return result


def _budget_method(opts: dict) -> str:
    """The row's method name: plain budget, or which measured sensitivities weigh its errors."""
    layer, step = bool(opts.get("layer_sensitivity")), bool(opts.get("step_sensitivity"))
    return {(False, False): "budget", (True, False): "budget+sens", (False, True): "budget+steps",
            (True, True): "budget+sens+steps"}[(layer, step)]


def _slug(label: str) -> str:
    """A file-name-safe form of a row label."""
    return "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in label).strip("_")[:60] or "plan"


def _device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"cpu ({platform.processor() or platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def _result(rows, calib, evalc, layout, dense_seconds, t_start, cost_f, cost_m, measure_time=False) -> dict:
    times = {"relative_time_flops": cost_f.describe(), "relative_time_h100": cost_m.describe()}
    if measure_time:
        times["relative_time_measured"] = ("wall-clock of the warm (second) sampling of the held-out seeds over the warm "
                                           "dense one, same process")
    return {
        "command": " ".join(["sparsevdit"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith("sparsevdit") else " ".join(sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": _device_name(),
        "model": "bundled VideoDiT (sparsevdit/models/weights)",
        "layout": layout.to_dict(), "tokens": layout.num_tokens,
        "calibration": calib.to_dict(), "held_out": evalc.to_dict(),
        "cost_models": times,
        "dense_eval_seconds": dense_seconds, "seconds": time.perf_counter() - t_start,
        "rows": rows,
    }


def _write(path: Path, data: dict) -> None:
    from ..atomic_files import non_finite_as_null, write_json

    write_json(path, non_finite_as_null(data))  # a long run's rows are never lost to one infinite ratio



STYLE = {"budget": ("tab:red", "o"), "budget+sens": ("tab:purple", "P"), "budget+steps": ("tab:orange", "X"),
         "budget+sens+steps": ("tab:brown", "*"), "sparse-vdit": ("tab:blue", "s"), "uniform-diag": ("tab:gray", "^"),
         "uniform-multi": ("tab:olive", "v"), "svg": ("tab:green", "D"), "radial": ("tab:pink", "<"),
         "sliding_tile": ("tab:cyan", ">")}


def plot_results(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), dpi=110)
    measured = any("relative_time_measured" in r for r in result["rows"])
    time_key = "relative_time_measured" if measured else "relative_time_flops"
    extra_colors = iter(["tab:gray", "black", "gold", "navy", "teal", "maroon"])
    methods = dict.fromkeys([*STYLE, *(r["method"] for r in result["rows"])])
    for method in methods:  # a method without a style of its own still gets a curve
        color, marker = STYLE.get(method) or (next(extra_colors, "black"), "h")
        pts = [r for r in result["rows"] if r["method"] == method and r["psnr"] is not None]
        if not pts:
            continue
        # budget: the max_time sweep is the curve; its other settings (targets, variants) stand alone
        line = [r for r in pts if method != "budget" or set(r.get("settings", {})) == {"max_time"}]
        alone = [r for r in pts if r not in line]
        for ax, key in zip(axes, ("density", time_key)):
            pp = sorted(line, key=lambda r: r[key])
            ax.plot([r[key] for r in pp], [r["psnr"] for r in pp], marker=marker, color=color, label=method,
                    linestyle="-" if method.startswith("uniform") else ":", alpha=0.9)
            if alone:
                ax.scatter([r[key] for r in alone], [r["psnr"] for r in alone], marker=marker, facecolors="none",
                           edgecolors=color, label=f"{method} (target / variants)" if key == "density" else None)
    axes[0].set_xlabel("attention density (mean over steps, layers, heads)")
    axes[1].set_xlabel("measured sampling time, relative to dense (warm runs, same process)" if measured
                       else "predicted attention time, relative to dense (FLOP cost model)")
    for ax in axes:
        ax.set_ylabel("PSNR vs dense, held-out seeds (dB)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    lay = result["layout"]
    fig.suptitle(f"bundled VideoDiT, {lay['frames']}x{lay['height']}x{lay['width']} tokens, "
                 f"{result['calibration']['steps']} steps, held-out seeds {result['held_out']['seeds']}", fontsize=10)
    fig.tight_layout()
    from ..atomic_files import saving

    try:
        with saving(path, suffix=".tmp" + path.suffix) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path


def markdown_table(result: dict) -> str:
    lines = ["| method | setting | density | pred. time (FLOP) | pred. time (H100 table) | PSNR dB | SSIM |",
             "|---|---|---:|---:|---:|---:|---:|"]
    order = ["budget", "budget+sens", "budget+steps", "budget+sens+steps", "sparse-vdit", "svg", "radial", "sliding_tile",
             "uniform-diag", "uniform-multi"]
    for r in sorted(result["rows"], key=lambda r: (order.index(r["method"]) if r["method"] in order else 9, r["density"])):
        psnr = f"{r['psnr']:.2f}" if r["psnr"] is not None else "inf"
        lines.append(f"| {r['method']} | {r['label']} | {r['density']:.1%} | {r['relative_time_flops']:.3f} | "
                     f"{r['relative_time_h100']:.3f} | {psnr} | {r['ssim']:.4f} |")
    return "\n".join(lines)
