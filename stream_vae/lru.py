"""Bounded per-entity state: the one LRU rule that windows, smoothers and trackers share."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

V = TypeVar("V")


def lru_slot(table: OrderedDict[str, V], key: str, make: Callable[[], V], max_entries: int) -> V:
    """``table[key]``, created with ``make()`` when missing, and marked as the most recently used.

    Beyond ``max_entries`` the least recently used entry is forgotten, so memory stays bounded
    however many entities a stream has.

    Examples
    --------
    >>> t: OrderedDict[str, list[int]] = OrderedDict()
    >>> for k in "abac":
    ...     lru_slot(t, k, list, 2).append(1)
    >>> list(t.items())  # "b", the least recently used, made room for "c"
    [('a', [1, 1]), ('c', [1])]
    """
    value = table.get(key)
    if value is None:
        value = table[key] = make()
        if len(table) > max_entries:
            table.popitem(last=False)
    else:
        table.move_to_end(key)
    return value
