"""The original `mgm/model/multimodal_projector/builder.py` names.

`build_vision_projector(config)` reads `mm_projector_type`, `mm_hidden_size` and `hidden_size` from a
model config, as the original did.
"""
from __future__ import annotations

from torch import nn

from mgm.model.projector import IdentityMap
from mgm.model.projector import build_vision_projector as _build
from mgm.model.settings import MGMSettings

__all__ = ["build_vision_projector", "IdentityMap", "SimpleResBlock"]


def build_vision_projector(config, delay_load: bool = False, **kwargs) -> nn.Module:
    """[*, mm_hidden_size] -> [*, hidden_size] projector of `config.mm_projector_type` (default linear)."""
    return _build(MGMSettings.from_config(config), config.mm_hidden_size, config.hidden_size)


class SimpleResBlock(nn.Module):
    """x + MLP(LayerNorm(x)) with a GELU MLP of width `channels` (defined, unused, in the original)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(channels)
        self.proj = nn.Sequential(nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, channels))

    def forward(self, x):
        x = self.pre_norm(x)
        return x + self.proj(x)
