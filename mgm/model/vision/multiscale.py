"""A high-resolution feature map kept factored: the channel stack of bilinear resizes of small maps.

The ConvNeXt tower's output is cat_s(resize(stage_s, S/4)) [N, Σ C_s, S/4, S/4] (2880 × 192 × 192 at
768, about 0.4 GB in float32), and patch info mining is the only reader of it. Bilinear resizing is
linear along each axis, so stage s of that map is R_s · x_s · C_sᵀ with small interpolation matrices
R_s [H, H_s] and C_s [W, W_s]. `MultiScaleMap` holds (x_s, R_s, C_s) and lets mining work on the
stage maps themselves (mgm.model.mining); a further bilinear resize (the HD global view) composes into
the matrices. `dense()` materialises the map exactly as the original's OpenCLIPVisionTower.backbone
(and, for a resized map, encode_images' F.interpolate) computed it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=64)
def _bilinear_matrix_cached(n_in: int, n_out: int, device: str) -> torch.Tensor:
    # Interpolating the identity with F.interpolate itself reproduces its weights, clamping included.
    eye = torch.eye(n_in, dtype=torch.float32, device=device).view(1, n_in, n_in, 1)
    out = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)
    return out[0, :, :, 0].T.contiguous()


def bilinear_matrix(n_in: int, n_out: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n_out, n_in] float32 weights of 1-D bilinear resizing with align_corners=False."""
    return _bilinear_matrix_cached(n_in, n_out, str(device))


@dataclass(frozen=True)
class MultiScaleMap:
    """The map cat_s(R_s · stages[s] · C_sᵀ) of shape [N, Σ C_s, H, W], never materialised unless asked.

    stages: [N, C_s, H_s, W_s] tensors; rows / cols: per stage a float32 [H, H_s] / [W, W_s] matrix,
    or None where that axis is not resized (the identity); source: the map this one was resized from
    (so `dense()` repeats the original's two interpolations rather than the composed one).
    """

    stages: tuple[torch.Tensor, ...]
    size: tuple[int, int]
    rows: tuple[torch.Tensor | None, ...]
    cols: tuple[torch.Tensor | None, ...]
    source: MultiScaleMap | None = None

    @classmethod
    def upsampled(cls, stages: list[torch.Tensor], size: tuple[int, int] | None = None) -> MultiScaleMap:
        """Every stage bilinearly resized to `size` (default: the first stage's size), as the HR tower does."""
        h, w = tuple(size) if size is not None else tuple(stages[0].shape[-2:])
        dev = stages[0].device
        rows = tuple(None if s.shape[-2] == h else bilinear_matrix(s.shape[-2], h, dev) for s in stages)
        cols = tuple(None if s.shape[-1] == w else bilinear_matrix(s.shape[-1], w, dev) for s in stages)
        return cls(tuple(stages), (h, w), rows, cols)

    @property
    def channels(self) -> int:
        return sum(s.shape[1] for s in self.stages)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.stages[0].shape[0], self.channels, *self.size))

    @property
    def dtype(self) -> torch.dtype:
        return self.stages[0].dtype

    @property
    def device(self) -> torch.device:
        return self.stages[0].device

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> MultiScaleMap:
        """Stages cast/moved; the matrices move with them and stay float32."""
        def move(m: torch.Tensor | None) -> torch.Tensor | None:
            return m if m is None or device is None else m.to(device)

        return replace(self, stages=tuple(s.to(dtype=dtype, device=device) for s in self.stages),
                       rows=tuple(map(move, self.rows)), cols=tuple(map(move, self.cols)),
                       source=self.source.to(dtype, device) if self.source is not None else None)

    def resized(self, size: tuple[int, int]) -> MultiScaleMap:
        """The map bilinearly resized to `size` (align_corners=False), composed into the matrices."""
        h, w = size
        if (h, w) == self.size:
            return self
        dev = self.device
        down_r, down_c = bilinear_matrix(self.size[0], h, dev), bilinear_matrix(self.size[1], w, dev)
        rows = tuple(down_r if m is None else down_r @ m for m in self.rows)
        cols = tuple(down_c if m is None else down_c @ m for m in self.cols)
        return MultiScaleMap(self.stages, (h, w), rows, cols, source=self)

    def dense(self) -> torch.Tensor:
        """[N, Σ C_s, H, W]: stages resized in float32 and cast back, then concatenated (as the original)."""
        if self.source is not None:
            full = self.source.dense()
            return F.interpolate(full.float(), size=self.size, mode="bilinear", align_corners=False).to(full.dtype)
        parts = [s if r is None and c is None else
                 F.interpolate(s.float(), size=self.size, mode="bilinear", align_corners=False).to(s.dtype)
                 for s, r, c in zip(self.stages, self.rows, self.cols)]
        return torch.cat(parts, dim=1)


def resize_map(hr: torch.Tensor | MultiScaleMap, size: tuple[int, int]) -> torch.Tensor | MultiScaleMap:
    """Bilinear resize of a dense [N, C, H, W] map (in float32, cast back) or of a factored one."""
    if isinstance(hr, MultiScaleMap):
        return hr.resized(size)
    return F.interpolate(hr.float(), size=size, mode="bilinear", align_corners=False).to(hr.dtype)
