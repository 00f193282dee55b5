"""Image-feature cache: an image's visual tokens are encoded once per engine, keyed by its content.

A key is a hash of the decoded pixels (mode, size, bytes) and of the view settings that shape the
features (LR / HR sizes, HD grid and global view, aspect-ratio handling, processor normalisation), so an
edited image or another view never meets a stale entry. Values are the projector's output for one
image [T, H] in the model's embedding dtype (before any family scaling, which the splice applies).
The cache is bounded in bytes and evicts the least recently used entry; an entry larger than the
whole bound is not kept.
"""
from __future__ import annotations

import hashlib

import torch
from PIL import Image

from mgm.inference.lru import ByteBoundedLRU


def view_settings(model, image_processor) -> str:
    """What, besides the pixels, decides an image's features on this model (one string)."""
    s = model.mgm_settings
    fields = (s.image_aspect_ratio, s.image_size_aux if s.has_aux else None, s.image_grid, s.image_global)
    proc = tuple(repr(getattr(image_processor, name, None))
                 for name in ("crop_size", "size", "image_size_raw", "image_mean", "image_std", "resample",
                               "rescale_factor", "do_resize", "do_center_crop", "do_rescale", "do_normalize"))
    return repr(fields + proc)


def image_key(image: Image.Image, view: str) -> str:
    """Content hash of a decoded image under view settings `view` (hex digest)."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(view.encode())
    digest.update(f"|{image.mode}|{image.size[0]}x{image.size[1]}|".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class FeatureCache(ByteBoundedLRU):
    """LRU map image key -> features [T, H], at most `max_bytes` in all (thread safe)."""

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.numel() * old.element_size()
            if size > self.max_bytes:
                return
            # a detached copy: the caller's tensor may be a view into a whole batch's features
            self._entries[key] = value.detach().clone()
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.bytes -= dropped.numel() * dropped.element_size()
