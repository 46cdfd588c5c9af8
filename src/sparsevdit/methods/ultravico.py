"""UltraViCo: length extrapolation by damping attention to tokens beyond the training window.

Not a mask: a logit transform applied on top of any plan or method (or of dense attention), through
every backend that can (``kernels.damping``; on the GPU the Triton kernel's distance transform). When a
model generates more frames than it was trained on, a pair of video tokens farther apart than half the
training length, ``train_frames * tokens_per_frame / 2`` tokens, has its positive logit multiplied by
``alpha`` (the paper's example: 0.9), and first-frame queries are barred from such keys
(docs/methods.md, UltraViCo). The window follows the video's own frame size, so one setting serves
every resolution.

    sparsevdit.apply(model, method="radial", ultravico=UltraViCo(train_frames=16, alpha=0.9))
    sparsevdit.apply(model, ultravico={"train_frames": 16})   # dense attention, damped
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..kernels.damping import LogitDamping
from ..layout import TokenLayout
from .base import MethodError


@dataclass(frozen=True)
class UltraViCo:
    """train_frames: frames (in tokens along time) the model was trained with.
    alpha: multiplier of far positive logits, in [0, 1].
    bar_first_frame: first-frame queries get no far keys at all (the paper's rule).
    """

    train_frames: int
    alpha: float = 0.9
    bar_first_frame: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.train_frames, bool) or not isinstance(self.train_frames, int) or self.train_frames < 1:
            raise MethodError(f"ultravico: train_frames must be an integer >= 1, got {self.train_frames!r}")
        try:  # alpha and bar_first_frame mean what they mean for the damping itself
            LogitDamping(0, self.alpha, self.bar_first_frame)
        except ValueError as exc:
            raise MethodError(f"ultravico: {str(exc).removeprefix('logit damping: ')}") from None

    @classmethod
    def of(cls, value: "UltraViCo | dict[str, Any] | None") -> "UltraViCo | None":
        """An UltraViCo from itself, a dict of its fields (unknown keys refused, naming the fields) or None."""
        if value is None or isinstance(value, UltraViCo):
            return value
        if not isinstance(value, dict):
            raise MethodError(f"ultravico must be an UltraViCo, a dict of its fields or None, got {type(value).__name__}")
        unknown = sorted(set(value) - {"train_frames", "alpha", "bar_first_frame"})
        if unknown or "train_frames" not in value:
            raise MethodError(f"ultravico takes train_frames (required), alpha, bar_first_frame; got {sorted(value)}")
        return cls(**value)

    def damping_for(self, layout: TokenLayout) -> LogitDamping:
        """The damping of a video of ``layout``: window = half the training length in this frame size's tokens."""
        return LogitDamping(self.train_frames * layout.tokens_per_frame // 2, float(self.alpha), self.bar_first_frame)
