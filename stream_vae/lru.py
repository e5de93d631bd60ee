"""Per-entity state: the one LRU rule that windows, smoothers and trackers share, and grouping by entity."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, TypeVar

import numpy as np

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


def entity_groups(keys: Sequence[str]) -> dict[str, np.ndarray[Any, np.dtype[np.intp]]]:
    """Row indices of each key, in arrival order; the keys in sorted order.

    Plain Python grouping: a numpy string array would drop a key's trailing NUL characters.

    >>> {k: v.tolist() for k, v in entity_groups(["b", "a\\0", "b", "a"]).items()}
    {'a': [3], 'a\\x00': [1], 'b': [0, 2]}
    """
    if len(keys) == 0:
        return {}
    first = keys[0]
    if all(k == first for k in keys):
        return {first: np.arange(len(keys))}
    rows: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        rows.setdefault(k, []).append(i)
    return {k: np.asarray(rows[k], dtype=np.intp) for k in sorted(rows)}


def pick(table: Mapping[str, V], keys: Collection[str] | None) -> Iterator[tuple[str, V]]:
    """``table``'s entries, or only those of ``keys`` it holds (a partial snapshot of some entities).

    >>> list(pick({"a": 1, "b": 2}, ["b", "z"]))
    [('b', 2)]
    """
    if keys is None:
        return iter(table.items())
    return ((k, table[k]) for k in keys if k in table)


def put(table: OrderedDict[str, V], key: str, value: V, max_entries: int) -> None:
    """Set ``table[key]`` as the most recently used entry, forgetting the least recent beyond ``max_entries``."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > max_entries:
        table.popitem(last=False)


def forget(table: MutableMapping[str, Any], keys: Iterable[str]) -> None:
    """Drop the entries of ``keys`` (entities whose partitions this worker no longer owns)."""
    for k in keys:
        table.pop(k, None)
