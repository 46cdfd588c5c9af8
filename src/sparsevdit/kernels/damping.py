"""Logit damping keyed on token distance (UltraViCo's length extrapolation), as every backend applies it.

For a query and a key that are both *video* tokens, ``d = |i - j|`` counted in the model's token order
(frame-major, so ``d / tokens_per_frame`` is about their frame distance). When ``d > window``:

- the key is *barred* (logit -inf) for queries of the first frame when ``bar_first_frame``;
- otherwise a positive logit is multiplied by ``alpha`` (a negative one is left alone).

Text rows and columns are never damped. A query barred from every key it keeps gets a zero output and a
log-sum-exp of -inf, as a row that keeps no key. ``apply_to_scores`` is the plain definition the
reference and blockwise backends use and the Triton kernel is tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..layout import TokenLayout


@dataclass(frozen=True)
class LogitDamping:
    window: int  # video-token distance beyond which logits are damped
    alpha: float  # multiplier of far positive logits, in [0, 1]
    bar_first_frame: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"logit damping: window must be an integer >= 0 (video tokens), got {self.window!r}")
        ok = isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool) and math.isfinite(self.alpha)
        if not ok or not 0 <= self.alpha <= 1:
            raise ValueError(f"logit damping: alpha must be a number in [0, 1], got {self.alpha!r}")
        if not isinstance(self.bar_first_frame, bool):
            raise ValueError(f"logit damping: bar_first_frame must be True or False, got {self.bar_first_frame!r}")

    def token_range(self, layout: TokenLayout) -> tuple[int, int, int]:
        """(first video token, end of the video, end of the barred first-frame rows) in model order."""
        lo = layout.video_start
        return lo, lo + layout.video_tokens, lo + (layout.tokens_per_frame if self.bar_first_frame else 0)

    def apply_to_scores(self, scores: torch.Tensor, q_tok: torch.Tensor, k_tok: torch.Tensor,
                        layout: TokenLayout) -> torch.Tensor:
        """``scores`` [..., nq, nk] given the token index (model order) of each query, ``q_tok`` [..., nq], and
        of each key, ``k_tok`` [..., nk] (leading dims broadcast against the scores')."""
        lo, hi, bar = self.token_range(layout)
        q_tok, k_tok = q_tok.to(scores.device).long()[..., :, None], k_tok.to(scores.device).long()[..., None, :]
        inside = (q_tok >= lo) & (q_tok < hi) & (k_tok >= lo) & (k_tok < hi)
        far = ((q_tok - k_tok).abs() > self.window) & inside
        out = torch.where(far & (scores > 0), scores * self.alpha, scores)
        return out.masked_fill(far & (q_tok < bar), float("-inf"))
