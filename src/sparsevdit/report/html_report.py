"""The demo's report page: one self-contained HTML file beside the videos and pictures it shows.

It opens straight from the folder (no server, no network): inline CSS, no scripts, and links only to
files that exist in the folder, by relative names. Every string from the report is escaped; a part
whose data or file is missing is left out, never an error.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from pathlib import Path, PurePosixPath
from typing import Any, Mapping
from urllib.parse import quote

from ..atomic_files import finite_or_none as _finite, non_finite_as_null, write_text

REPORT_NAME = "report.html"
PICTURE_CAPTIONS = {
    "plan": "Sparsity plan: pattern family of each head (colour) and its attention density in % (text).",
    "plan_steps": "Sparsity plan over the denoising steps: one panel per distinct step range.",
    "attention_maps": "Attention of a few heads: dense block map (log scale) beside the blocks the sparse "
                      "pattern keeps; the title gives the share of attention mass kept (recall).",
    "fidelity": "Fidelity study: PSNR and SSIM of sparse against dense, per method.",
    "frames": "Frames: dense and sparse rows per seed.",
}
CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 1em}dt{font-weight:bold}dd{margin:0}
video,img{max-width:100%;height:auto}figure{margin:1em 0}figcaption{color:#555;font-size:90%}
pre{background:#f6f6f6;padding:1em;overflow:auto}"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, fmt: str) -> str:
    """A formatted number; '∞' for infinity (a PSNR of identical videos), '–' for missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "–" if value is None or isinstance(value, float) else _e(value)
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return format(value, fmt)



def local_file(folder: Path, name: Any) -> str | None:
    """The URL (relative, quoted) of ``name`` if it is a file inside ``folder``, else None."""
    if not isinstance(name, str) or not name or "\\" in name or ":" in name:
        return None
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not (folder / rel).is_file():
        return None
    return quote(rel.as_posix())


def _header(report: Mapping) -> str:
    settings = report.get("settings") if isinstance(report.get("settings"), Mapping) else {}
    items: list[tuple[str, str]] = [("Model", _e(report.get("model", "bundled VideoDiT")))]
    if "device" in report:
        items.append(("Device", _e(report["device"])))
    layout = settings.get("layout")
    if isinstance(layout, Mapping):
        text = f"{layout.get('frames')} x {layout.get('height')} x {layout.get('width')} video tokens"
        if layout.get("text_tokens"):
            text += f" + {layout.get('text_tokens')} text tokens ({layout.get('text_position')})"
        items.append(("Layout", _e(text)))
    if "tokens" in settings:
        items.append(("Tokens", _e(settings["tokens"])))
    source = report.get("plan_source", report.get("sparse_config"))
    if source is not None:
        items.append(("Sparse attention", _e(source)))
    if "attention_density" in report:
        items.append(("Mean attention density", _number(report["attention_density"], ".1%")))
    if "psnr" in report or "ssim" in report:
        items.append(("Sparse vs dense", f"PSNR {_number(report.get('psnr'), '.2f')} dB, "
                                         f"SSIM {_number(report.get('ssim'), '.4f')}"))
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _timing(report: Mapping) -> str:
    timing = report.get("timing") if isinstance(report.get("timing"), Mapping) else {}
    runs = {name: dict(timing[name]) if isinstance(timing.get(name), Mapping) else {} for name in ("dense", "sparse")}
    for name in runs:
        runs[name].setdefault("seconds", report.get(f"{name}_seconds"))
        steps = runs[name].get("step_ms")
        if runs[name].get("median_step_ms") is None and isinstance(steps, list) and steps \
                and all(_finite(s) is not None for s in steps):
            runs[name]["median_step_ms"] = statistics.median(steps)

    def ratio(key: str) -> float | None:
        d, s = _finite(runs["dense"].get(key)), _finite(runs["sparse"].get(key))
        return d / s if d is not None and s else None

    lines = [("warm-up (s)", "warmup_seconds", ".2f", None),
             ("per-step median (ms)", "median_step_ms", ".1f", _finite(timing.get("speedup_per_step")) or ratio("median_step_ms")),
             ("total (s)", "seconds", ".1f", ratio("seconds"))]
    rows = []
    for label, key, fmt, speedup in lines:
        if all(runs[n].get(key) is None for n in runs):
            continue
        cells = "".join(f"<td class=n>{_number(runs[n].get(key), fmt)}</td>" for n in runs)
        rows.append(f"<tr><th>{label}</th>{cells}<td class=n>{'' if speedup is None else f'{speedup:.2f}x'}</td></tr>")
    if not rows:
        return ""
    return ("<h2>Timing</h2><table><tr><th></th><th>dense</th><th>sparse</th><th>speedup</th></tr>"
            + "".join(rows) + "</table>")


def _video(folder: Path, seed: Any) -> str:
    mp4, gif = (local_file(folder, f"seed{seed}_side_by_side.{ext}") for ext in ("mp4", "gif"))
    still = f"<img src=\"{_e(gif)}\" alt=\"seed {_e(seed)}: dense | sparse\">" if gif else ""
    if mp4:
        return f"<video controls loop muted autoplay playsinline src=\"{_e(mp4)}\">{still}</video>"
    return still


def _seeds(folder: Path, report: Mapping) -> str:
    per_seed = report.get("per_seed")
    if not isinstance(per_seed, list) or not per_seed:
        return ""
    rows = []
    for r in per_seed:
        if not isinstance(r, Mapping):
            continue
        caption = r.get("caption", r.get("class", ""))
        rows.append(f"<tr><td class=n>{_e(r.get('seed', ''))}</td><td>{_e(caption)}</td>"
                    f"<td class=n>{_number(r.get('psnr'), '.2f')}</td><td class=n>{_number(r.get('ssim'), '.4f')}</td>"
                    f"<td>{_video(folder, r.get('seed'))}</td></tr>")
    return ("<h2>Seeds</h2><table><tr><th>seed</th><th>class caption</th><th>PSNR (dB)</th><th>SSIM</th>"
            "<th>dense | sparse</th></tr>" + "".join(rows) + "</table>")


def _pictures(folder: Path, report: Mapping) -> str:
    pictures = dict(report["pictures"]) if isinstance(report.get("pictures"), Mapping) else {}
    pictures.setdefault("frames", "frames.png")
    order = [n for n in PICTURE_CAPTIONS if n in pictures] + [n for n in pictures if n not in PICTURE_CAPTIONS]
    parts = []
    for name in order:
        url = local_file(folder, pictures[name])
        if url:
            caption = PICTURE_CAPTIONS.get(name, str(name))
            parts.append(f"<figure><img src=\"{_e(url)}\" alt=\"{_e(name)}\"><figcaption>{_e(caption)}</figcaption></figure>")
    return "<h2>Pictures</h2>" + "".join(parts) if parts else ""


def _files(folder: Path, report: Mapping) -> str:
    files = report.get("files") if isinstance(report.get("files"), list) else []
    links = [f"<li><a href=\"{_e(url)}\">{_e(name)}</a></li>" for name in files if (url := local_file(folder, name))]
    return "<h2>Files</h2><ul>" + "".join(links) + "</ul>" if links else ""


def _settings(report: Mapping) -> str:
    if "settings" not in report:
        return ""
    text = json.dumps(non_finite_as_null(report["settings"]), indent=1, default=str, allow_nan=False)
    return f"<h2>Settings</h2><pre>{_e(text)}</pre>"


def write_report_html(folder: str | Path, report: Mapping) -> Path:
    """Write ``folder/report.html`` for the demo ``report`` (see ``demo.run_demo``), atomically."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder: the report goes beside its videos and pictures")
    if not isinstance(report, Mapping):
        raise ValueError(f"report must be a dict (run_demo's report), got {type(report).__name__}")
    body = "".join([
        "<h1>sparsevdit demo: dense vs sparse attention, same seeds</h1>",
        _header(report), _timing(report), _seeds(folder, report), _pictures(folder, report),
        _files(folder, report), _settings(report),
    ])
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>sparsevdit demo report</title>"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>{CSS}</style></head>"
            f"<body>{body}</body></html>\n")
    return write_text(folder / REPORT_NAME, page)
