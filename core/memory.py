"""How much memory kept results hold, and which to let go first.

The app keeps finished Runs in memory so that every session asking for the same Run gets it at
once. Their sizes differ by a thousand times (a 64 px field's Run holds about 10 MB, a 500 px
field's over 1 GB), so a count of entries bounds nothing: :class:`MemoryBudget` counts bytes and
names the least recently used entries to drop once the total passes the budget. It only keeps
the books; the caller drops the entries it names.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

MIB = 1024 * 1024


class MemoryBudget:
    """Byte sizes of kept entries, least recently used first; safe to share between threads.

    Args:
        limit_bytes: the most the entries may hold together. The newest entry is always kept,
            even alone over the limit (the session that asked for it is showing it).
        max_entries: the most entries kept, however small.
    """

    def __init__(self, limit_bytes: float, max_entries: int = 16) -> None:
        self.limit_bytes = float(limit_bytes)
        self.max_entries = max(1, int(max_entries))
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def use(self, key: str, nbytes: int) -> list[str]:
        """Record that entry ``key`` (``nbytes`` large) was just used; return the keys to drop,
        oldest first, so that what stays fits the limit."""
        with self._lock:
            self._sizes[key] = int(nbytes)
            self._sizes.move_to_end(key)
            dropped: list[str] = []
            while len(self._sizes) > self.max_entries or (
                len(self._sizes) > 1 and sum(self._sizes.values()) > self.limit_bytes
            ):
                oldest, _ = self._sizes.popitem(last=False)
                dropped.append(oldest)
            return dropped

    def forget(self, key: str) -> None:
        """Stop counting ``key`` (its entry was dropped elsewhere)."""
        with self._lock:
            self._sizes.pop(key, None)

    @property
    def held_bytes(self) -> int:
        """What the entries counted now hold together."""
        with self._lock:
            return sum(self._sizes.values())

    @property
    def keys(self) -> list[str]:
        """The entries counted now, least recently used first."""
        with self._lock:
            return list(self._sizes)
