"""A small thread-safe least-recently-used map, bounded by entries and, optionally, bytes.

>>> c = LruCache(2); c.put("a", 1); c.put("b", 2); c.get("a"); c.put("c", 3)
1
>>> c.get("b") is None, c.get("a"), c.get("c")
(True, 1, 3)
>>> sized = LruCache(10, max_bytes=5, weigh=len)
>>> sized.put("x", "abc"); sized.put("y", "de"); sized.put("z", "f")
>>> sized.get("x") is None, sized.get("y"), sized.get("z"), sized.weight
(True, 'de', 'f', 3)
>>> sized.put("big", "too large"); sized.get("big") is None
True
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """At most ``size`` entries and, with ``weigh``, at most ``max_bytes`` of them.

    The least recently used entries are forgotten first; an entry heavier than
    ``max_bytes`` on its own is not kept at all.
    """

    def __init__(self, size: int, *, max_bytes: int | None = None,
                 weigh: Callable[[V], int] | None = None) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self._weigh = weigh
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    @property
    def weight(self) -> int:
        """The total weight of the entries held."""
        with self._lock:
            return self._weight

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def pop(self, key: K) -> V | None:
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self._weight -= item[1]
            return item[0]

    def put(self, key: K, value: V) -> None:
        weight = self._weigh(value) if self._weigh is not None else 0
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._weight -= old[1]
            if self.max_bytes is not None and weight > self.max_bytes:
                return
            self._items[key] = (value, weight)
            self._weight += weight
            while len(self._items) > self.size or (
                    self.max_bytes is not None and self._weight > self.max_bytes):
                _, (_, dropped) = self._items.popitem(last=False)
                self._weight -= dropped

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
