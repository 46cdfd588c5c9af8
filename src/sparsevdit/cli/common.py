"""What every command shares: the console, the one error line for bad input, option validators.

Bad input never reaches a user as a traceback: ``CommandGroup`` (the class of the top-level app) turns
click's usage errors and the library's errors meant for users into one line on stderr, ``error: ...``,
and exit status 2. Anything else is a bug and keeps its traceback. ``SPARSEVDIT_TRACEBACK=1`` shows the
traceback of a user error too (for debugging the library).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional, Sequence

import typer
from rich.console import Console
from typer import BadParameter
from typer.core import TyperGroup

try:  # typer >= 0.2x carries its own copy of click: its usage errors are not the click package's
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer on the click package
    from click.exceptions import UsageError

console = Console()

EXIT_BAD_INPUT = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    # ValueError covers PlanError and PatternError (its subclasses) and the library's own validation;
    # BackendError is a RuntimeError, so it is named. Paths a user gave that do not exist or are the
    # wrong kind are user errors too.
    from ..kernels.registry import BackendError

    return (ValueError, BackendError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


def error_line(message: str) -> NoReturn:
    """Print ``error: message`` (one line) on stderr and exit 2."""
    text = " ".join(str(message).split())  # one line, whatever the message held
    typer.echo(f"{typer.style('error:', fg='red')} {text}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def fail(message: str) -> NoReturn:
    """A command refuses its input (kept for the commands' own checks)."""
    error_line(message)


def _usage_error(exc: UsageError) -> NoReturn:
    where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    error_line(exc.format_message() + where)


class CommandGroup(TyperGroup):
    """The top-level group: every command, nested ones included, runs inside its ``invoke``."""

    def make_context(self, info_name: Optional[str], args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:  # the top level's own options (`sparsevdit --bogus`)
            return super().make_context(info_name, args, parent=parent, **extra)
        except UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:  # a bad option value, a missing option, an unknown command
            _usage_error(exc)
        except _user_errors() as exc:
            if os.environ.get("SPARSEVDIT_TRACEBACK"):
                raise
            error_line(str(exc) or type(exc).__name__)


# --------------------------------------------------------------------------------------------------
# option types and checks
# --------------------------------------------------------------------------------------------------
def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{low:g}{'<' if low_open else '<='}")
    parts.append("x")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='}{high:g}")
    return "".join(parts) if len(parts) > 1 else "any finite number"


def finite(min: float | None = None, max: float | None = None, *, min_open: bool = False, max_open: bool = False):
    """A callback for a float option: a finite number in the range. NaN passes every comparison, so a
    plain range would let it through; it is refused here by name, like infinity."""
    allowed = _range_text(min, max, min_open, max_open)

    def check(value: Optional[float]) -> Optional[float]:
        if value is None:
            return value
        ok = math.isfinite(value)
        ok = ok and (min is None or (value > min if min_open else value >= min))
        ok = ok and (max is None or (value < max if max_open else value <= max))
        if not ok:
            if not math.isfinite(value):
                raise BadParameter(f"{value} is not a finite number (allowed: {allowed}).")
            raise BadParameter(f"{value:g} is not in the range {allowed}.")
        return value

    return check


def at_least(low: int, high: int | None = None):
    """A callback for an int option in [low, high] (None stays None); the message names the value."""
    allowed = f"{low}<=x" + (f"<={high}" if high is not None else "")

    def check(value: Optional[int]) -> Optional[int]:
        if value is not None and (value < low or (high is not None and value > high)):
            raise BadParameter(f"{value} is not in the range {allowed}.")
        return value

    return check


def one_of(names: Sequence[str]):
    """A callback for a text option with a fixed set of values."""

    def check(value: str) -> str:
        if value not in names:
            raise BadParameter(f"{value!r} is not one of {', '.join(names)}.")
        return value

    return check


def bad(option: str, value: Any, allowed: str) -> NoReturn:
    """Refuse ``option``'s value, naming what is allowed (a click usage error: one line, exit 2)."""
    raise BadParameter(f"{value!r} is not allowed: {allowed}.", param_hint=f"'{option}'")


def int_list(text: Optional[str], option: str, *, low: int = 0, high: int | None = None,
             what: str = "") -> tuple[int, ...] | None:
    """A comma list of integers in [low, high] (None stays None)."""
    if text is None:
        return None
    allowed = f"a comma list of integers {low}<=x" + (f"<={high}" if high is not None else "") + (f" ({what})" if what else "")
    items = [x.strip() for x in text.split(",")]
    values = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            bad(option, text, allowed)
        if value < low or (high is not None and value > high):
            bad(option, value, allowed)
        values.append(value)
    if not values:
        bad(option, text, allowed)
    return tuple(values)


DEVICES = "auto, cpu, cuda"


def check_device(value: str) -> str:
    """``--device`` callback: auto, cpu, or cuda where CUDA is present. (No ``cuda:N``: the commands pick
    their defaults by ``device == "cuda"``; use CUDA_VISIBLE_DEVICES to choose a GPU.)"""
    import torch

    if value not in ("auto", "cpu", "cuda"):
        raise BadParameter(f"{value!r} is not a device; choose from {DEVICES}.")
    if value == "cuda" and not torch.cuda.is_available():
        raise BadParameter(f"{value!r}: no CUDA GPU is available on this machine (use cpu or auto).")
    return value


def resolve_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def check_backend(value: str) -> str:
    """``--backend`` callback: auto or a registered attention backend."""
    from ..kernels.registry import available_backends

    names = ["auto", *available_backends()]
    if value not in names:
        raise BadParameter(f"{value!r} is not an attention backend; choose from {', '.join(names)}.")
    return value


def check_out_file(value: Optional[Path]) -> Optional[Path]:
    """``--out FILE`` callback: not an existing folder (the write would fail only after the work)."""
    if value is not None and value.is_dir():
        raise BadParameter(f"{str(value)!r} is a folder: give a file name.")
    return value


def check_out_folder(value: Optional[Path]) -> Optional[Path]:
    """``--out DIR`` callback: not an existing file."""
    if value is not None and value.exists() and not value.is_dir():
        raise BadParameter(f"{str(value)!r} exists and is not a folder.")
    return value


def parse_params(items: Sequence[str]) -> dict:
    """``key=value`` strings to a dict; values are read as JSON (numbers, true/false, lists), else text.
    A number that JSON reads as infinity or NaN (``1e999``, ``NaN``) is refused, not passed on."""
    params: dict = {}
    for item in items:
        if "=" not in item:
            bad("--param", item, "key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if _has_non_finite(value):
            bad("--param", item, "finite numbers only")
        params[key.strip()] = value
    return params


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


def load_plan(path: Optional[Path]):
    """A plan file, or None; a malformed one is one error line naming the file."""
    if path is None:
        return None
    from ..plan import PlanError, SparsityPlan

    try:
        plan = SparsityPlan.load(path)
    except PlanError as exc:
        error_line(f"{path}: {exc}")
    plan.source = str(path)
    return plan


def method_choice(method: Optional[str], items: Sequence[str], plan: Optional[Path]) -> tuple[str, dict] | None:
    """``--method NAME -p key=value ...`` checked against the method registry (None without --method)."""
    if method is None:
        if items:
            bad("--param", items[0], "parameters of a method: give --method NAME with them (`sparsevdit methods`)")
        return None
    if plan is not None:
        bad("--method", method, "a method or a --plan, not both (a plan names its own patterns or methods)")
    from ..methods import MethodError, parse_params as method_params

    params = parse_params(items)
    try:
        method_params(method, params)
    except (MethodError, TypeError) as exc:
        bad("--method" if "unknown method" in str(exc) else "--param", method if "unknown method" in str(exc) else
            " ".join(items), str(exc))
    return method, params


# --------------------------------------------------------------------------------------------------
# the bundled model's shape, read without loading its weights
# --------------------------------------------------------------------------------------------------
def model_config(weights: Optional[Path]):
    """The VDiTConfig of a model folder (default: the bundled model) from its config.json alone, so the
    options can be checked against the model before any weights are read."""
    from ..models.vdit import VDiTConfig
    from ..models.weights import BUNDLED_DIR

    folder = Path(weights) if weights is not None else BUNDLED_DIR
    path = folder / "config.json"
    if not path.is_file():
        bad("--weights", str(folder), "a model folder with config.json and model-*.safetensors "
            "(train one with `sparsevdit train`)")
    return VDiTConfig(**json.loads(path.read_text())["config"])


def check_pixels(cfg, *, frames: Optional[int] = None, height: Optional[int] = None,
                 width: Optional[int] = None) -> None:
    """Height and width must be multiples of the model's patch size (frames: at least 1)."""
    if frames is not None and frames < 1:
        bad("--frames", frames, "at least 1")
    for option, value in (("--height", height), ("--width", width)):
        if value is not None and (value < cfg.patch or value % cfg.patch):
            bad(option, value, f"a positive multiple of the model's patch size {cfg.patch}")


def check_classes(classes: Optional[tuple[int, ...]], cfg, option: str = "--classes") -> None:
    n = cfg.num_classes
    for c in classes or ():
        if not 0 <= c < n:
            bad(option, c, f"a scene class 0<=x<={n - 1} (the model's {n} classes: `sparsevdit classes`)")


def print_registry(title: str, kind: str, what: str, rows: list[tuple[str, str, list[str]]]) -> None:
    """A listing command's table: one row per registered name, its summary and its parameter lines."""
    from rich.table import Table

    table = Table(title=title, show_lines=True)
    table.add_column(kind, style="bold")
    table.add_column(what)
    table.add_column("parameters (default): meaning")
    for name, summary, lines in rows:
        table.add_row(name, summary, "\n".join(lines) or "-")
    console.print(table)


# A token layout given on the command line (`patterns show`, `methods show`): sizes after patchify.
LayoutFrames = Annotated[int, typer.Option("--frames", "-f", callback=at_least(1), help="latent frames T")]
LayoutHeight = Annotated[int, typer.Option("--height", callback=at_least(1), help="tokens per column H (after patchify)")]
LayoutWidth = Annotated[int, typer.Option("--width", callback=at_least(1), help="tokens per row W (after patchify)")]
LayoutText = Annotated[int, typer.Option("--text", callback=at_least(0), help="number of text tokens in the self-attention sequence")]
LayoutTextPosition = Annotated[Optional[str], typer.Option("--text-position", help="where the text sits: none | prefix | suffix (default prefix if --text > 0)")]
BlockSize = Annotated[int, typer.Option("--block-size", "-b", callback=at_least(1), help="tokens per block")]
