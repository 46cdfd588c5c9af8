"""``budget``: the cheapest patterns under an error budget (our search).

Inputs: a profile (``profile.py``: every candidate's output error per step, layer and head on the
dense trajectory) and a cost model (``cost.py``: every candidate's predicted kernel time).

Error measure. A head's error enters the model's residual stream multiplied by the attention
branch's gate, so the search weighs it by that: the *error energy* of candidate ``c`` for head ``h``
of layer ``l`` at step ``s`` is ``E = MSE(O_c, O_dense) * g[s, l]``, with ``g`` the mean squared adaLN
gate of the layer's attention branch at that step (profiled; 1 for a model without one). With
``layer_sensitivity`` each layer's energies are also scaled by a measured sensitivity: the final
video's MSE against dense when only that layer runs its share of a reference plan, divided by the
energy predicted for it (one sampling run per layer on the calibration seeds). ``step_sensitivity``
does the same for ``step_groups`` consecutive groups of steps (one run per group): the profile's
per-step errors are measured on the dense trajectory and cannot see that an error made at a
high-noise step is carried (and grown) through every later step, while one made near the end is not.
Both together multiply (a separable [step, layer] weight).

Allocation. Steps ``< dense_warmup_steps`` and layers in ``dense_layers`` stay dense; the other steps
are cut into ``step_ranges`` ranges (None: every step its own range). For a multiplier ``mu``, each
(range, layer, head) takes the candidate minimising

    (steps in range) * time(c) + mu * sum over the range's steps of E(c)

(dense, error 0, is a candidate, so a head stays dense when nothing cheaper is worth its error; a dense
head is priced at the kernel table's dense time, although dense heads run on the faster of that and fused
SDPA at 1.0 (in a dense layer, and in their own launch inside a sparse one): reported times account for
that, the choice does not; a layer-exact choice was tried and lost
1.3-1.8 dB at predicted times 0.3-0.5 on the bundled model, see docs/results.md). This is the
Lagrangian of "least total time subject to a total error energy", so it spends error where it buys the
most time instead of giving every head the same error. Consecutive ranges with equal choices
merge into one plan entry; all-dense ranges get none.

Budget (exactly one):

``max_time``: predicted attention time, relative to dense; the largest ``mu`` (least error) whose
    plan is predicted at most that fast is found by bisection. No sampling.
``max_rel_error``: per layer: in each (range, layer) the cheapest choice whose layer-level relative
    error ``sqrt(sum sq. error / sum dense sq. norm)`` over its heads and steps is at most the value
    (a ``mu`` per layer, by bisection). No sampling.
``target_psnr``: PSNR (dB) of the video sampled with the plan against the dense video on the
    calibration seeds, or on ``psnr_seeds`` (their dense videos sampled once): more seeds, or seeds
    the profile never saw, make the target hold better on new seeds (one seed set's PSNR moves by
    +-2 dB from another's at 9 seeds). A bracketing search on ``log mu`` (probes placed by interpolating PSNR, at most
    ``bisection_steps``, stopping once a plan meets the target by at most ``psnr_tolerance`` dB); each
    probe samples the calibration seeds (a plan seen before is not sampled again); the cheapest plan
    meeting the target wins. The profile's errors are
    measured on the dense trajectory and miss build-up across layers and steps; the PSNR check sees it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch

from ..metrics import video_psnr_ssim
from ..plan import LayerEntry, ModelSignature, SparsityPlan
from .cost import CostModel
from .profile import Profile
from ..atomic_files import finite_or_none as _finite

MU_MIN, MU_MAX = 1e-9, 1e15


@dataclass
class BudgetSettings:
    target_psnr: float | None = None
    max_rel_error: float | None = None
    max_time: float | None = None
    step_ranges: int | None = None
    dense_warmup_steps: int = 0
    dense_layers: tuple = ()
    layer_sensitivity: bool = False
    step_sensitivity: bool = False
    step_groups: int = 5
    bisection_steps: int = 7
    psnr_tolerance: float = 0.5  # target_psnr: stop once a plan meets the target by at most this (dB)
    psnr_seeds: tuple = ()  # target_psnr: the seeds its PSNR is measured on (empty: the calibration seeds)
    backend: str = "auto"

    def __post_init__(self):
        self.dense_layers = tuple(int(x) for x in self.dense_layers)
        seeds = tuple(self.psnr_seeds)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"budget search: psnr_seeds must be distinct integers >= 0, got {list(seeds)}")
        if seeds and self.target_psnr is None:
            raise ValueError("budget search: psnr_seeds are the seeds target_psnr is measured on; give target_psnr "
                             "or drop psnr_seeds")
        self.psnr_seeds = seeds
        given = [x for x in (self.target_psnr, self.max_rel_error, self.max_time) if x is not None]
        if len(given) != 1:
            raise ValueError("budget search: give exactly one of target_psnr (dB), max_rel_error (per layer) "
                             "or max_time (predicted attention time relative to dense)")
        if self.step_ranges is not None and self.step_ranges < 1:
            raise ValueError(f"step_ranges must be >= 1 (or None: every step), got {self.step_ranges}")
        # NaN passes every comparison, so each budget is checked to be a finite number in its range
        # (max_time 0 is allowed here: every head skipped is its answer; the CLI refuses it as a likely slip)
        for name, value, ok, allowed in (
            ("target_psnr", self.target_psnr, lambda x: x > 0, "> 0"),
            ("max_rel_error", self.max_rel_error, lambda x: x >= 0, ">= 0"),
            ("max_time", self.max_time, lambda x: 0 <= x <= 1, "in [0, 1]"),
            ("psnr_tolerance", self.psnr_tolerance, lambda x: x > 0, "> 0"),
        ):
            if value is not None and not (math.isfinite(value) and ok(value)):
                raise ValueError(f"budget search: {name} must be a finite number {allowed}, got {value}")
        if self.dense_warmup_steps < 0:
            raise ValueError(f"dense_warmup_steps must be >= 0, got {self.dense_warmup_steps}")
        if self.step_groups < 1:
            raise ValueError(f"step_groups must be >= 1, got {self.step_groups}")


def split_steps(steps: int, ranges: int | None, warmup: int = 0) -> list[tuple[int, int]]:
    """[start, end) ranges covering steps warmup..steps-1 in ``ranges`` (nearly) equal parts (None: one per step)."""
    warmup = min(max(0, warmup), steps)
    n = steps - warmup
    if n == 0:
        return []
    ranges = n if ranges is None else min(ranges, n)
    bounds = [warmup + round(i * n / ranges) for i in range(ranges + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def candidate_times(profile: Profile, cost: CostModel) -> torch.Tensor:
    """Predicted relative time [L, H, C] of every candidate for every head."""
    d = profile.density
    out = torch.zeros_like(d)
    for ci, cand in enumerate(profile.candidates):
        for layer in range(d.shape[0]):
            for h in range(d.shape[1]):
                out[layer, h, ci] = cost.head_time(cand.family, float(d[layer, h, ci]))
    return out


class Allocator:
    """The Lagrangian allocation of one profile under one cost model (see the module docstring)."""

    def __init__(self, profile: Profile, cost: CostModel, settings: BudgetSettings, sensitivity: torch.Tensor | None = None):
        """``sensitivity``: measured weights of the error energy, per layer [L] or per step and layer [S, L]."""
        self.profile, self.cost, self.settings = profile, cost, settings
        self.times = candidate_times(profile, cost)  # [L, H, C]
        gain = profile.attn_gain if profile.attn_gain is not None else torch.ones(profile.steps, profile.num_layers)
        self.energy = profile.mse * gain[:, :, None, None]  # [S, L, H, C]
        if sensitivity is not None:
            weight = sensitivity.expand(profile.steps, profile.num_layers) if sensitivity.dim() == 1 else sensitivity
            if tuple(weight.shape) != (profile.steps, profile.num_layers):
                raise ValueError(f"sensitivity of shape {tuple(sensitivity.shape)} for a profile of {profile.steps} steps "
                                 f"x {profile.num_layers} layers: give [layers] or [steps, layers]")
            self.energy = self.energy * weight[:, :, None, None]
        self.sq = profile.rel_err.pow(2) * profile.out_rms.pow(2)[..., None]  # [S, L, H, C] (per element)
        self.norm = profile.out_rms.pow(2)  # [S, L, H]
        self.ranges = split_steps(profile.steps, settings.step_ranges, settings.dense_warmup_steps)
        self.layers = [l for l in range(profile.num_layers) if l not in settings.dense_layers]
        self.dense = next(i for i, c in enumerate(profile.candidates) if c.pattern == "dense")
        # per (range, layer): summed energies [H, C]
        self.range_energy = {(a, b, l): self.energy[a:b, l].sum(0) for a, b in self.ranges for l in self.layers}

    def _pick(self, a, b, layer, mu) -> list[int]:
        obj = (b - a) * self.times[layer] + mu * self.range_energy[(a, b, layer)]
        return obj.argmin(-1).tolist()

    def picks(self, mu: float | dict) -> dict:
        """{(start, end, layer): [candidate per head]}; ``mu`` one number or one per (start, end, layer)."""
        return {(a, b, l): self._pick(a, b, l, mu[(a, b, l)] if isinstance(mu, dict) else mu)
                for a, b in self.ranges for l in self.layers}

    def relative_time(self, picks: dict) -> float:
        p = self.profile
        total = p.steps * p.num_layers  # dense layer-steps cost 1 per head
        t = float(total)
        for (a, b, layer), heads in picks.items():
            if all(c == self.dense for c in heads):
                continue
            t -= (b - a)
            t += (b - a) * sum(float(self.times[layer, h, c]) for h, c in enumerate(heads)) / len(heads)
        return t / total

    def layer_rel_error(self, a, b, layer, heads) -> float:
        sq = sum(float(self.sq[a:b, layer, h, c].sum()) for h, c in enumerate(heads))
        return math.sqrt(sq / max(float(self.norm[a:b, layer].sum()), 1e-30))

    def mean_layer_rel_error(self, picks: dict) -> float:
        """Mean over steps and layers of the layer-level relative error (dense layer-steps count 0)."""
        p = self.profile
        total = sum((b - a) * self.layer_rel_error(a, b, l, heads) for (a, b, l), heads in picks.items())
        return total / (p.steps * p.num_layers)

    def for_time(self, max_time: float) -> tuple[float, dict]:
        """The largest mu whose plan's predicted relative time is <= max_time."""
        lo, hi = MU_MIN, MU_MAX
        if self.relative_time(self.picks(hi)) <= max_time:
            return hi, self.picks(hi)
        for _ in range(80):
            mid = math.sqrt(lo * hi)
            if self.relative_time(self.picks(mid)) <= max_time:
                lo = mid
            else:
                hi = mid
        return lo, self.picks(lo)

    def for_layer_error(self, tau: float) -> tuple[dict, dict]:
        """Per (range, layer): the smallest mu whose layer relative error is <= tau."""
        mus = {}
        for key in self.range_energy:
            a, b, layer = key
            if self.layer_rel_error(a, b, layer, self._pick(a, b, layer, MU_MIN)) <= tau:
                mus[key] = MU_MIN
                continue
            lo, hi = MU_MIN, MU_MAX
            for _ in range(80):
                mid = math.sqrt(lo * hi)
                if self.layer_rel_error(a, b, layer, self._pick(a, b, layer, mid)) <= tau:
                    hi = mid
                else:
                    lo = mid
            mus[key] = hi
        return mus, self.picks(mus)


def plan_from_picks(profile: Profile, picks: dict, metadata: dict | None = None) -> SparsityPlan:
    """A SparsityPlan from per-range choices; equal consecutive ranges merged, all-dense ranges omitted."""
    dense_idx = {i for i, c in enumerate(profile.candidates) if c.pattern == "dense"}
    by_layer: dict[int, list] = {}
    for (start, end, layer), heads in sorted(picks.items(), key=lambda kv: (kv[0][2], kv[0][0])):
        runs = by_layer.setdefault(layer, [])
        if runs and runs[-1][1] == start and runs[-1][2] == heads:
            runs[-1][1] = end
        else:
            runs.append([start, end, heads])
    entries = []
    for layer in sorted(by_layer):
        for start, end, heads in by_layer[layer]:
            if all(c in dense_idx for c in heads):
                continue
            specs = tuple(profile.spec(c, layer, h) for h, c in enumerate(heads))
            entries.append(LayerEntry(layer, specs, start, None if end >= profile.steps else end))
    return SparsityPlan(ModelSignature(**profile.model), profile.layout, profile.block_size, entries, dict(metadata or {}))


def _group_sensitivity(profile: Profile, cost: CostModel, settings: BudgetSettings, model, groups: dict,
                       reference_time: float, log=None) -> dict:
    """Per group of (range, layer) keys: final-video MSE when only that group runs its part of a reference
    plan (the unweighted allocation at ``reference_time``), divided by the error energy predicted for it;
    None for a group whose part is all dense."""
    alloc = Allocator(profile, cost, settings)
    _, picks = alloc.for_time(reference_time)
    out = {}
    for name, member in groups.items():
        mine = {k: v for k, v in picks.items() if member(k)}
        pred = sum(float(alloc.energy[a:b, layer, h, c].sum()) for (a, b, layer), hs in mine.items() for h, c in enumerate(hs))
        if pred <= 0:
            out[name] = None
            continue
        video = _runner(model, profile).sample(plan=plan_from_picks(profile, mine), backend=settings.backend)
        out[name] = float((video - profile.dense_video).pow(2).mean()) / pred
        if log:
            log(f"  {name}: sensitivity {out[name]:.3g}")
    return out


def _runner(model, profile: Profile):
    """The runner that samples ``profile``'s calibration run (a runner, or a model with the profile's calibration)."""
    from .runners import as_runner

    return as_runner(model, profile.calib)


def _normalised(values: list, active: list[int]) -> torch.Tensor:
    """Measured sensitivities to a tensor with mean 1 over ``active``; unmeasured entries get 1."""
    t = torch.tensor([1.0 if v is None else v for v in values])
    measured = [i for i in active if values[i] is not None]
    return t / t[measured].mean() if measured else t


def layer_sensitivity(profile: Profile, cost: CostModel, settings: BudgetSettings, model, *, reference_time: float = 0.3,
                      log=None) -> torch.Tensor:
    """Per layer [L]: final-video MSE when only that layer runs its part of a reference plan, divided by
    the error energy predicted for it (mean 1 over the searched layers)."""
    layers = [l for l in range(profile.num_layers) if l not in settings.dense_layers]
    groups = {f"layer {l}": (lambda k, l=l: k[2] == l) for l in layers}
    got = _group_sensitivity(profile, cost, settings, model, groups, reference_time, log)
    return _normalised([got.get(f"layer {l}") for l in range(profile.num_layers)], layers)


def step_groups(steps: int, groups: int, warmup: int = 0) -> list[tuple[int, int]]:
    """``groups`` consecutive [start, end) step groups covering the searched steps."""
    return split_steps(steps, groups, warmup)


def step_sensitivity(profile: Profile, cost: CostModel, settings: BudgetSettings, model, *, reference_time: float = 0.3,
                     log=None) -> torch.Tensor:
    """Per step [S]: the measured sensitivity of its group of steps (``settings.step_groups`` groups; a
    range of the plan belongs to the group of its first step), mean 1 over the searched groups."""
    spans = step_groups(profile.steps, settings.step_groups, settings.dense_warmup_steps)
    groups = {f"steps {a}-{b - 1}": (lambda k, a=a, b=b: a <= k[0] < b) for a, b in spans}
    got = _group_sensitivity(profile, cost, settings, model, groups, reference_time, log)
    per_group = _normalised([got[f"steps {a}-{b - 1}"] for a, b in spans], list(range(len(spans))))
    out = torch.ones(profile.steps)
    for (a, b), v in zip(spans, per_group.tolist()):
        out[a:b] = v
    return out


def measured_sensitivity(profile: Profile, cost: CostModel, settings: BudgetSettings, model, *,
                         reference_time: float = 0.3, log=None) -> torch.Tensor | None:
    """The [S, L] weight ``settings`` asks for (layer and / or step sensitivity), or None for neither."""
    if not (settings.layer_sensitivity or settings.step_sensitivity):
        return None
    weight = torch.ones(profile.steps, profile.num_layers)
    if settings.layer_sensitivity:
        weight = weight * layer_sensitivity(profile, cost, settings, model, reference_time=reference_time, log=log)[None, :]
    if settings.step_sensitivity:
        weight = weight * step_sensitivity(profile, cost, settings, model, reference_time=reference_time, log=log)[:, None]
    return weight


def budget_search(profile: Profile, cost: CostModel, settings: BudgetSettings, *, model=None, console=None,
                  cache: dict | None = None, sensitivity: torch.Tensor | None = None) -> SparsityPlan:
    """Run the budget search (see the module docstring); ``model`` is needed for ``target_psnr`` and
    ``layer_sensitivity`` / ``step_sensitivity``. ``sensitivity``: weights measured before ([L] from
    ``layer_sensitivity()``, or [S, L] from ``measured_sensitivity()``), used instead of measuring them again."""
    log = console.print if console is not None else None
    sens = sensitivity
    if sens is None and (settings.layer_sensitivity or settings.step_sensitivity):
        if model is None:
            raise ValueError("budget search with layer or step sensitivity samples videos: pass the model")
        sens = measured_sensitivity(profile, cost, settings, model,
                                    reference_time=settings.max_time if settings.max_time is not None else 0.3, log=log)
    alloc = Allocator(profile, cost, settings, sens)
    probes, calib_psnr, mu = [], None, None
    if settings.max_time is not None:
        mu, picks = alloc.for_time(float(settings.max_time))
    elif settings.max_rel_error is not None:
        mus, picks = alloc.for_layer_error(float(settings.max_rel_error))
    else:
        if model is None:
            raise ValueError("budget search with target_psnr samples videos: pass the model")
        cache = {} if cache is None else cache
        target = float(settings.target_psnr)
        checker, reference = _runner(model, profile), profile.dense_video
        if settings.psnr_seeds:
            checker = checker.with_seeds(settings.psnr_seeds)
            dense_key = json.dumps({"dense": list(settings.psnr_seeds)})
            if dense_key not in cache:
                if log:
                    log(f"  dense videos of the {len(settings.psnr_seeds)} PSNR seeds")
                cache[dense_key] = checker.sample()
            reference = cache[dense_key]

        def plan_key(plan) -> str:
            return json.dumps({"seeds": list(settings.psnr_seeds), "entries": [e.to_dict() for e in plan.entries]},
                              sort_keys=True)

        def psnr_of(m: float) -> float:
            plan = plan_from_picks(profile, alloc.picks(m))
            key = plan_key(plan)
            if key not in cache:
                if not plan.entries:
                    cache[key] = math.inf
                else:
                    video = checker.sample(plan=plan, backend=settings.backend)
                    cache[key] = video_psnr_ssim(video, reference)["psnr"]
            probes.append({"mu": m, "relative_time": alloc.relative_time(alloc.picks(m)), "psnr": _finite(cache[key])})
            if log:
                log(f"  mu {m:.3g}: predicted time {probes[-1]['relative_time']:.3f}, "
                    f"{'PSNR-seed' if settings.psnr_seeds else 'calibration'} PSNR {cache[key]:.2f} dB")
            return cache[key]

        # search between the plans predicted at 2% and 98% of dense time, on log mu: each probe is
        # placed by linear interpolation of PSNR in log mu (aiming at the middle of the tolerance band),
        # kept within the middle 60% of the bracket so it always shrinks; stop once a probe meeting the
        # target is within the tolerance above it
        lo, _ = alloc.for_time(0.02)
        hi, _ = alloc.for_time(0.98)
        lo, hi = max(lo, MU_MIN), max(hi, lo * 10)
        tol = settings.psnr_tolerance
        p_lo = psnr_of(lo)
        if p_lo >= target:
            mu = lo
        elif (p_hi := psnr_of(hi)) < target:
            mu = MU_MAX  # nothing sparse enough to matter meets the target: (nearly) dense
            psnr_of(mu)
        else:
            for _ in range(settings.bisection_steps):
                if p_hi - target <= tol:
                    break
                frac = 0.5
                if math.isfinite(p_hi) and p_hi > p_lo:
                    frac = min(0.8, max(0.2, (target + tol / 2 - p_lo) / (p_hi - p_lo)))
                mid = math.exp(math.log(lo) + frac * (math.log(hi) - math.log(lo)))
                p_mid = psnr_of(mid)
                if p_mid >= target:
                    hi, p_hi = mid, p_mid
                else:
                    lo, p_lo = mid, p_mid
            mu = hi
        picks = alloc.picks(mu)
        calib_psnr = cache[plan_key(plan_from_picks(profile, picks))]
    plan = plan_from_picks(profile, picks)
    pred = cost.plan_time(plan, profile.steps)
    plan.metadata = {
        "algorithm": "budget",
        "settings": {**asdict(settings), "dense_layers": list(settings.dense_layers),
                     "psnr_seeds": list(settings.psnr_seeds)},
        "mu": mu,
        "calibration": profile.calib.to_dict(),
        "cost_model": cost.describe(),
        "expected_density": pred["density"],
        "expected_relative_time": pred["relative_time"],
        "expected_speedup": pred["speedup"],
        "expected_rel_error": alloc.mean_layer_rel_error(picks),
        "calibration_psnr": _finite(calib_psnr),
        "bisection": probes,
        "layer_sensitivity": _per_layer(sens) if sens is not None and (sens.dim() == 1 or settings.layer_sensitivity) else None,
        "step_sensitivity": _per_step(sens) if sens is not None and sens.dim() == 2 and settings.step_sensitivity else None,
        "candidates": profile.labels(),
    }
    return plan


def _per_layer(sens: torch.Tensor) -> list[float]:
    """The layer factor of a [L] or separable [S, L] weight (its mean over steps)."""
    return [float(x) for x in (sens if sens.dim() == 1 else sens.mean(0))]


def _per_step(sens: torch.Tensor) -> list[float]:
    """The step factor of a separable [S, L] weight, mean 1 over steps."""
    row = sens.mean(1)
    return [float(x) for x in row / row.mean().clamp_min(1e-30)]
