"""A wheel works outside the checkout (issue 14): everything the package reads at run time lies inside
the package and is listed in pyproject's package-data, so ``pip install`` ships it."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sparsevdit
from sparsevdit import demo
from sparsevdit.models import weights
from sparsevdit.search import cost

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

PACKAGE = Path(sparsevdit.__file__).resolve().parent
ROOT = PACKAGE.parents[1]
PYPROJECT = ROOT / "pyproject.toml"

# every file or folder of data the package reads at run time (add new ones here)
RUNTIME_DATA = {
    "cost model kernel table": cost.DEFAULT_KERNEL_TABLE,
    "bundled weights": weights.BUNDLED_DIR,
    "bundled plans": demo.BUNDLED_PLANS,
}


def _runtime_files() -> list[Path]:
    files = []
    for path in RUNTIME_DATA.values():
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return files


def _package_data_globs() -> list[str]:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["sparsevdit"]


@pytest.mark.parametrize("what", sorted(RUNTIME_DATA))
def test_runtime_data_lies_in_the_package(what):
    path = Path(RUNTIME_DATA[what]).resolve()
    assert path.is_relative_to(PACKAGE), f"{what}: {path} is outside the package {PACKAGE}: a wheel lacks it"
    assert path.exists(), f"{what}: {path} is missing"


def test_package_data_globs_cover_the_runtime_files():
    globs = _package_data_globs()
    files = _runtime_files()
    assert files
    uncovered = [str(f.relative_to(PACKAGE)) for f in files
                 if f.suffix != ".py" and not any(fnmatch.fnmatch(str(f.relative_to(PACKAGE)), g) for g in globs)]
    assert not uncovered, f"add to [tool.setuptools.package-data] in pyproject.toml: {uncovered}"


def test_package_kernel_table_is_the_measured_one():
    measured = ROOT / "bench" / "results" / cost.DEFAULT_KERNEL_TABLE.name
    if not measured.exists():
        pytest.skip("no checkout: bench/results is not here")
    assert cost.DEFAULT_KERNEL_TABLE.read_bytes() == measured.read_bytes(), (
        "bench/results/kernels-h200.json changed: copy it to src/sparsevdit/data/ (the cost model reads that copy)")
    assert cost.CostModel.measured().kind == "measured"


_PARENT = re.compile(r"\.parent\b(?!s)")
_PARENTS = re.compile(r"\.parents\[(\d+)\]")


def test_no_source_reads_outside_the_package():
    """Paths built from ``__file__`` stay inside the package (a repository path is not in a wheel)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        depth = len(path.relative_to(PACKAGE).parts) - 1  # folders between the package root and the file
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "__file__" not in line:
                continue
            climb = len(_PARENT.findall(line)) + sum(int(k) + 1 for k in _PARENTS.findall(line))
            climb += line.count("dirname(") + line.count('".."') + line.count("'..'")
            if climb > depth + 1:
                offenders.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert not offenders, "reads outside the package (ship the file as package data):\n" + "\n".join(offenders)


@pytest.mark.slow
def test_built_wheel_holds_the_runtime_files(tmp_path):
    """Build a wheel from a copy of the sources (weights replaced by stubs of the same names, for speed)."""
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(PYPROJECT, tree)
    shutil.copy(ROOT / "README.md", tree)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.safetensors"))
    for f in weights.BUNDLED_DIR.glob("*.safetensors"):
        (tree / f.relative_to(ROOT)).write_bytes(b"stub")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path / "dist"), str(tree)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("sparsevdit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [str(f.relative_to(PACKAGE.parent)) for f in _runtime_files() if str(f.relative_to(PACKAGE.parent)) not in names]
    assert not missing, f"the wheel lacks {missing}"
