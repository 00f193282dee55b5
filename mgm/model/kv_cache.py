"""A KV cache that appends in place: decoding one token no longer copies the whole cache.

transformers' `DynamicLayer.update` concatenates, so every decoding step copies each layer's keys
and values ([B, heads, L, head_dim], 2.5 MB per layer and tensor at 600 tokens of a 1024-wide model).
`GrowingLayer` keeps them in a buffer with spare room along the sequence axis (doubling when full)
and returns views of the filled part; assigning `keys` / `values` (as ContinuousBatch does when rows
join or leave) replaces the buffer. `GrowingCache` is a DynamicCache made of such layers, built through
`Cache`'s own constructor (`layer_class_to_replicate`), not altered after construction.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

MIN_ROOM = 256  # spare sequence positions allocated with each (re)allocation


class GrowingLayer(DynamicLayer):
    """DynamicLayer over a preallocated buffer: update() writes the new positions in place."""

    def __init__(self) -> None:
        self._buffers: dict[str, tuple[torch.Tensor | None, int]] = {"keys": (None, 0), "values": (None, 0)}
        super().__init__()

    def _view(self, name: str) -> torch.Tensor | None:
        buf, used = self._buffers[name]
        return buf if buf is None or buf.dim() != 4 else buf[:, :, :used]

    def _assign(self, name: str, value: torch.Tensor | None) -> None:
        used = value.shape[-2] if value is not None and value.dim() == 4 else 0
        self._buffers[name] = (value, used)

    keys = property(lambda self: self._view("keys"), lambda self, v: self._assign("keys", v))
    values = property(lambda self: self._view("values"), lambda self, v: self._assign("values", v))

    def _append(self, name: str, new: torch.Tensor) -> torch.Tensor:
        buf, used = self._buffers[name]
        need = used + new.shape[-2]
        if buf is None or buf.dim() != 4 or buf.shape[-2] < need or buf.shape[:2] != new.shape[:2] \
                or buf.shape[-1] != new.shape[-1] or buf.dtype != new.dtype:
            room = torch.empty((*new.shape[:2], max(2 * need, need + MIN_ROOM), new.shape[-1]),
                               dtype=new.dtype, device=new.device)
            if used:
                room[:, :, :used] = buf[:, :, :used]
            buf = room
        buf[:, :, used:need] = new
        self._buffers[name] = (buf, need)
        return buf[:, :, :need]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.device = key_states.device
            self.is_initialized = True
        return self._append("keys", key_states), self._append("values", value_states)

    def get_seq_length(self) -> int:
        return self._buffers["keys"][1] if self.is_initialized else 0


class GrowingCache(DynamicCache):
    """An empty DynamicCache whose layers are GrowingLayer (created lazily, one per decoder layer)."""

    def __init__(self) -> None:
        # Cache's constructor, as DynamicCache's own does without a config, with our layer class
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)


def growing_cache() -> GrowingCache:
    """A fresh `GrowingCache`."""
    return GrowingCache()
