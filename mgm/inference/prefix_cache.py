"""KV prefix cache: the keys and values of sequences already prefilled (or generated), for reuse.

A sequence is keyed item by item: a token id, or an image's content hash (`feature_cache.image_key`)
standing for the `image_tokens` positions its features occupy. A decoder's KV at a position depends only
on the items before and at it, so a request may reuse the first k positions of ANY entry it shares its
first items with; the longest shared run over all entries wins. A changed system prompt, template or
image changes an item, so reuse stops there and nothing stale is read.

Entries hold one row's KV per layer ([1, heads, L, dim], as the model produced it) and are bounded in
bytes, least recently used first out. An entry whose key extends an older one replaces it (the older
is a prefix of the newer, so nothing is lost: a chat's turn supersedes the turn before).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from mgm.inference.lru import ByteBoundedLRU

Item = int | str  # a token id, or an image's content hash


@dataclass
class PrefixEntry:
    """One cached sequence: its key and its KV."""

    key: tuple[Item, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # (keys, values) [1, heads, length, dim] per layer
    length: int  # positions (an image counts image_tokens)
    nbytes: int


def expanded_length(key: tuple[Item, ...] | list[Item], image_tokens: int) -> int:
    """Positions a key occupies in the model's sequence."""
    return len(key) + (image_tokens - 1) * sum(isinstance(item, str) for item in key)


def shared_items(a: tuple[Item, ...], b: tuple[Item, ...]) -> int:
    """Length of the longest common prefix of two keys."""
    n = 0
    for x, y in zip(a, b):
        if x != y or type(x) is not type(y):
            break
        n += 1
    return n


class PrefixCache(ByteBoundedLRU):
    """LRU store of prefix KV, at most `max_bytes` in all (thread safe). `image_tokens`: positions per image."""

    def __init__(self, max_bytes: int, image_tokens: int) -> None:
        super().__init__(max_bytes)  # entries: id -> PrefixEntry
        self.image_tokens = image_tokens
        self._ids = itertools.count()
        self.reused_tokens = 0
        self.prefilled_tokens = 0

    def lookup(self, key: tuple[Item, ...], max_items: int) -> tuple[PrefixEntry | None, int]:
        """The entry sharing the most leading items with `key` (at most `max_items`) and that count.

        Counts a hit (something reused) or a miss; the chosen entry becomes most recently used.
        """
        best, best_items = None, 0
        with self._lock:
            for entry_id, entry in self._entries.items():
                n = min(shared_items(entry.key, key), max_items)
                if n > best_items:
                    best, best_items, best_id = entry, n, entry_id
            if best is None:
                self.misses += 1
                return None, 0
            self._entries.move_to_end(best_id)
            self.hits += 1
            return best, best_items

    def count_prefill(self, reused: int, prefilled: int) -> None:
        with self._lock:
            self.reused_tokens += reused
            self.prefilled_tokens += prefilled

    def store(self, key: tuple[Item, ...], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
        """Keep `layers` (copied) for `key`; False when they are not kept (too big, or already covered)."""
        length = expanded_length(key, self.image_tokens)
        if not key or any(k.shape[-2] != length for k, _ in layers):
            raise ValueError(f"the KV holds {layers[0][0].shape[-2] if layers else 0} positions, the key {length}")
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if nbytes > self.max_bytes:
            return False
        with self._lock:
            for entry_id, entry in list(self._entries.items()):
                shared = shared_items(entry.key, key)
                if shared == len(key):  # an entry already holds this whole sequence
                    self._entries.move_to_end(entry_id)
                    return False
                if shared == len(entry.key):  # superseded: the new entry extends it
                    del self._entries[entry_id]
                    self.bytes -= entry.nbytes
        copied = [(k.detach().clone(), v.detach().clone()) for k, v in layers]
        with self._lock:
            self._entries[next(self._ids)] = PrefixEntry(key, copied, length, nbytes)
            self.bytes += nbytes
            while self.bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.bytes -= dropped.nbytes
        return True

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "reused_tokens": self.reused_tokens, "prefilled_tokens": self.prefilled_tokens}
