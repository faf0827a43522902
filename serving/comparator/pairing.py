"""Bounded waiting rooms for what has not found its other half yet.

Every entry leaves after `ttl` seconds, or earlier when `max_items` are waiting (oldest first);
either way `on_drop(key, value, why)` is called with why = "expired" or "evicted", so that every
loss is counted, never silent. Entries keep their insertion order, which is also their deadline
order (one TTL per store), so expiring is popping from the front.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field


@dataclass
class BoundedStore[K: Hashable, V]:
    ttl: float
    max_items: int
    on_drop: Callable[[K, V, str], None] = lambda key, value, why: None
    _items: OrderedDict[K, tuple[float, V]] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        entry = self._items.get(key)
        return entry[1] if entry is not None else None

    def put(self, key: K, value: V, now: float) -> None:
        """Store (or replace, restarting its clock) `key`; the oldest leaves when full."""
        self._items.pop(key, None)
        self._items[key] = (now + self.ttl, value)
        while len(self._items) > self.max_items:
            old_key, (_, old_value) = self._items.popitem(last=False)
            self.on_drop(old_key, old_value, "evicted")

    def pop(self, key: K) -> V | None:
        entry = self._items.pop(key, None)
        return entry[1] if entry is not None else None

    def expire(self, now: float) -> None:
        items = self._items
        while items:
            key, (deadline, value) = next(iter(items.items()))
            if deadline > now:
                return
            del items[key]
            self.on_drop(key, value, "expired")
