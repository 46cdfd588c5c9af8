import json
import math

import torch

from sparsevdit import patterns as P
from sparsevdit.layout import TokenLayout
from sparsevdit.report.attention_study import LABELS, head_statistics, run_study


def test_head_statistics_match_direct_computation():
    layout = TokenLayout(2, 4, 5)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, layout.num_tokens, 8, generator=gen), torch.randn(3, layout.num_tokens, 8, generator=gen)
    diag = P.build("diagonal", layout, block_size=8, width=6)
    mask = diag.token_mask()
    pooled, recall, col_mass = head_statistics(q, k, layout, 8, {"d": mask}, chunk=7)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1)
    torch.testing.assert_close(recall["d"], (probs * mask).sum((-1, -2)) / layout.num_tokens)
    assert torch.allclose(pooled.sum(-1), torch.ones(3, pooled.shape[1]), atol=1e-5)  # each row's mass sums to 1
    torch.testing.assert_close(col_mass.sum(-1), torch.ones(3), atol=1e-5, rtol=1e-5)


def test_study_runs_on_bundled_model(tmp_path):
    study = run_study(tmp_path, frames=2, size=16, steps=2, block_size=16)
    data = json.loads((tmp_path / "study.json").read_text())
    assert data["counts"] == {str(k): v for k, v in study["counts"].items()}
    assert all(r["label"] in LABELS for r in data["heads"])
    assert len(data["heads"]) == 2 * 8 * 6  # observed steps x layers x heads
    assert all((tmp_path / f).exists() for f in data["figures"])
