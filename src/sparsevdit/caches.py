"""One bounded LRU cache type for every cache in the package, each registered so that
``sparsevdit.clear_caches()`` empties them all.

Keys must say what is cached: a pattern's *content* (``BlockPattern.key``, which includes a digest
of its index data), a device, a layout; never only a recipe or a name.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

_ALL: dict[str, "BoundedCache"] = {}
_CLEARERS: list[Callable[[], None]] = []  # cache_clear of functools.lru_cache'd helpers keyed by value


class BoundedCache:
    """A least-recently-used mapping holding at most ``maxsize`` entries."""

    def __init__(self, name: str, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"cache {name!r}: maxsize must be >= 1, got {maxsize}")
        self.name, self.maxsize = name, maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        _ALL[name] = self

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = build()
        self.put(key, value)
        return value

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            return default

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def clear_with_the_others(cached_function):
    """Decorator for a ``functools.lru_cache``'d function whose keys are values (a layout, a tuple of
    ints): ``clear_caches`` empties it too. Returns the function unchanged."""
    _CLEARERS.append(cached_function.cache_clear)
    return cached_function


def clear_caches() -> None:
    """Empty every cache of the package (token masks, block masks, block indices, device copies)."""
    for cache in _ALL.values():
        cache.clear()
    for clear in _CLEARERS:
        clear()


def registered_caches() -> dict[str, BoundedCache]:
    return dict(_ALL)
