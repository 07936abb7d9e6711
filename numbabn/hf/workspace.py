"""Work arrays that a network reuses from one call to the next.

A fresh multi-megabyte NumPy array reaches memory through page faults each
time the allocator has handed its pages back to the system, a measurable share
of a network HVP (CHANGELOG.md). :class:`Sequential` therefore keeps one array
per (layer, role, shape, dtype) and the layer maps write into it (``out=``).
"""

from __future__ import annotations

import threading
from typing import Any

from ._namespace import _xp


class Scratch:
    """The work arrays of one layer: one per role, reused across calls when a
    store backs it, fresh on every request otherwise (a layer used on its own).

    Parameters
    ----------
    store : dict or None
        Arrays kept so far, keyed by (owner, role, shape, dtype, namespace).
    owner : int
        The layer's position, so that layers never share an array.
    """

    def __init__(self, store: dict | None = None, owner: int = 0) -> None:
        self._store, self._owner = store, owner

    def empty(self, role: str, shape: tuple[int, ...], like: Any) -> Any:
        """An uninitialised array of ``like``'s namespace and dtype, shaped ``shape``."""
        return self._kept(role, shape, like, lambda xp: xp.empty(shape, like.dtype))

    def zeros(self, role: str, like: Any) -> Any:
        """A zero array shaped like ``like``; callers only read it."""
        return self._kept(role, like.shape, like, lambda xp: xp.zeros_like(like))

    def _kept(self, role: str, shape, like: Any, make) -> Any:
        """The array of ``role`` made by ``make(xp)``: kept in the store, if any."""
        xp = _xp(like)
        if self._store is None:
            return make(xp)
        key = (self._owner, role, tuple(shape), like.dtype.str, xp.__name__)
        if key not in self._store:
            self._store[key] = make(xp)
        return self._store[key]


class Workspace:
    """Every layer's work arrays, one set per thread (calls from several threads
    never share an array)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def scratches(self, n_layers: int) -> list[Scratch]:
        """One :class:`Scratch` per layer, backed by this thread's store."""
        store = self._local.__dict__.setdefault("arrays", {})
        return [Scratch(store, k) for k in range(n_layers)]

    def clear(self) -> None:
        """Drop this thread's arrays (the next call allocates afresh)."""
        self._local.__dict__.pop("arrays", None)


FRESH = Scratch()
"""A scratch without a store: every request is a new array."""
