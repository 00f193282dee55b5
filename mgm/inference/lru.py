"""The bookkeeping both engine caches share: an LRU `OrderedDict` under a lock, its byte count and bound,
and its hit / miss counters (`mgm.inference.feature_cache`, `mgm.inference.prefix_cache`)."""
from __future__ import annotations

import threading
from collections import OrderedDict


class ByteBoundedLRU:
    """Entries in least-recently-used order, at most `max_bytes` in all; subclasses store and evict."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._entries), "bytes": self.bytes,
                "max_bytes": self.max_bytes}
