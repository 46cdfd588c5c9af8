"""The width of a band pattern that lands nearest a target density (one helper for every caller)."""

from __future__ import annotations

from typing import Callable


def width_for_density(density_at: Callable[[int], float], target: float, max_width: int) -> int:
    """The width in ``1..max_width`` whose ``density_at(width)`` is nearest ``target``.

    ``density_at`` must not decrease with the width (a band's kept blocks only grow): bisection finds
    the narrowest width reaching ``target``, then the one just below it is taken if it is nearer
    (ties go to the wider one)."""
    lo, hi = 1, max(1, int(max_width))
    while lo < hi:
        mid = (lo + hi) // 2
        if density_at(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    below = max(1, lo - 1)
    return below if abs(density_at(below) - target) < abs(density_at(lo) - target) else lo
