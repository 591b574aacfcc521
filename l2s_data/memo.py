"""A bounded, thread-safe memo: values made once per key, the least recently used dropped first.

``Memo(max_items=N)`` keeps at most N values; ``Memo(max_weight=W, weight=f)`` keeps values whose
weights ``f(value)`` sum to at most W, and never keeps one heavier than W / 8 (it would push out
too much). ``memo.get(key, make)`` returns the value kept for ``key``, or calls ``make()`` outside
the lock and keeps what it returns; an error from ``make`` is raised and nothing is kept. Two
threads that miss one key at once may both make it; the first value kept wins.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Memo"]


class Memo:
    def __init__(self, max_items: int | None = None, *, max_weight: int | None = None,
                 weight: Callable[[Any], int] | None = None):
        if (max_weight is None) != (weight is None):
            raise ValueError("max_weight and weight go together")
        if max_items is None and max_weight is None:
            raise ValueError("a Memo needs max_items, max_weight, or both")
        self.max_items, self.max_weight, self._weight = max_items, max_weight, weight
        self._values: OrderedDict[Hashable, Any] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._values

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        value = make()  # outside the lock
        w = 0 if self._weight is None else self._weight(value)
        if self.max_weight is not None and w > self.max_weight // 8:
            return value
        with self._lock:
            if key in self._values:
                return self._values[key]
            self._values[key] = value
            self._total += w
            while ((self.max_items is not None and len(self._values) > self.max_items)
                   or (self.max_weight is not None and self._total > self.max_weight)):
                _, old = self._values.popitem(last=False)
                self._total -= 0 if self._weight is None else self._weight(old)
        return value
