"""Hostile torch files (issue 14): profiles and training checkpoints load tensors and plain data only; a
crafted pickle cannot run code, and a file of another kind is a typed error saying what was expected."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from sparsevdit.layout import TokenLayout
from sparsevdit.models.data import CLASSES
from sparsevdit.models.train import CheckpointError, TrainConfig, load_checkpoint, train
from sparsevdit.models.vdit import VDiTConfig
from sparsevdit.search.candidates import fixed
from sparsevdit.search.common import CalibrationConfig
from sparsevdit.search.profile import PROFILE_FORMAT, Profile, ProfileError

PLAN = Path(__file__).resolve().parents[1] / "src" / "sparsevdit" / "models" / "plans" / "demo-cpu-16x48x48.json"


class _RunsCode:
    """Unpickling this calls os.system: what a crafted profile or checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tiny_profile() -> Profile:
    S, L, H, C, nb = 2, 2, 2, 2, 3
    return Profile(
        {"class_name": "VideoDiT", "num_layers": L, "num_heads": H, "head_dim": 32}, TokenLayout(2, 2, 2), 4,
        CalibrationConfig(frames=2, height=8, width=8, steps=S), [fixed("dense"), fixed("diagonal", width=4)],
        {"frame_major": torch.zeros(L, H, 1, dtype=torch.int64)}, torch.rand(L, H, C), torch.rand(S, L, H, C),
        torch.rand(S, L, H, C), torch.rand(S, L, H, C), torch.rand(S, L, H), {"frame_major": torch.rand(S, L, H, nb)},
        None, torch.rand(1, 3, 2, 8, 8), {"seconds": 1.5, "device": "cpu"}, torch.ones(S, L),
    )


def test_profile_round_trip_with_weights_only(tmp_path):
    prof = tiny_profile()
    old = os.umask(0o022)
    try:
        path = prof.save(tmp_path / "p.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["p.pt"]
    torch.load(path, weights_only=True)  # plain data: the strict loader takes it
    again = Profile.load(path)
    assert again.layout == prof.layout and again.calib == prof.calib and again.labels() == prof.labels()
    torch.testing.assert_close(again.rel_err, prof.rel_err)
    assert again.settings == prof.settings


def test_crafted_profile_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": PROFILE_FORMAT, "version": 1, "settings": _RunsCode(marker)}, path)
    with pytest.raises(ProfileError, match="could run code") as info:
        Profile.load(path)
    assert "sparsevdit profile" in str(info.value)
    assert not marker.exists()


def test_crafted_plain_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_RunsCode(marker)))  # a legacy (non-zip) pickle
    with pytest.raises(ProfileError, match="not a torch file"):
        Profile.load(path)
    assert not marker.exists()


def test_plan_given_as_profile(tmp_path):
    with pytest.raises(ProfileError) as info:
        Profile.load(PLAN)
    msg = str(info.value)
    assert "JSON" in msg and "a profile written by `sparsevdit profile`" in msg


@pytest.mark.parametrize(
    "content, words",
    [(b"", ["empty"]), (b"\x00\x01garbage", ["not a torch file"]), (b"PK\x03\x04truncated", ["damaged", "truncated"])],
)
def test_not_a_profile(tmp_path, content, words):
    path = tmp_path / "p.pt"
    path.write_bytes(content)
    with pytest.raises(ProfileError) as info:
        Profile.load(path)
    for word in words:
        assert word in str(info.value)


def test_truncated_profile(tmp_path):
    path = tiny_profile().save(tmp_path / "p.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ProfileError, match="damaged or truncated"):
        Profile.load(path)


def test_missing_profile(tmp_path):
    with pytest.raises(ProfileError, match="cannot read"):
        Profile.load(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "data, words",
    [({"format": "other"}, ["not a sparsevdit profile"]), ([1, 2], ["not a sparsevdit profile"]),
     ({"format": PROFILE_FORMAT, "version": 2}, ["version 2"]),
     ({"format": PROFILE_FORMAT, "version": 1, "model": {}}, ["damaged", "layout"])],
)
def test_other_torch_file_as_profile(tmp_path, data, words):
    path = tmp_path / "p.pt"
    torch.save(data, path)
    with pytest.raises(ProfileError) as info:
        Profile.load(path)
    for word in words:
        assert word in str(info.value)


# training checkpoints ---------------------------------------------------------------------------

TINY = VDiTConfig(dim=32, depth=1, heads=2, num_classes=len(CLASSES), frames=4, height=16, width=16)


def test_crafted_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {}, "ema": {}, "opt": {}, "step": 1, "history": [_RunsCode(marker)]}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    cfg = TrainConfig(steps=1, batch=1, val_clips=1, model=TINY)
    with pytest.raises(CheckpointError, match="sparsevdit train"):
        train(cfg, tmp_path, device="cpu", resume=True, log=lambda *a: None)
    assert not marker.exists()


def test_other_file_as_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="lacks model, ema, opt, step, history"):
        load_checkpoint(path)
    path.write_text('{"json": true}')
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(path)


def test_no_unsafe_torch_load_in_the_package():
    src = Path(__file__).resolve().parents[1] / "src" / "sparsevdit"
    offenders = []
    for path in src.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and ("weights_only=True" not in line or path.name != "torch_files.py"):
                offenders.append(f"{path.relative_to(src)}:{n}: {line.strip()}")
    assert not offenders, "load torch files through sparsevdit.torch_files.load_plain:\n" + "\n".join(offenders)
