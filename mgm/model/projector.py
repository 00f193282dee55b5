"""Vision-language projectors (docs/original.md#projectors): `linear`, `mlp{N}x_gelu`, `identity`.

Module indices match the original so state-dict keys are `mm_projector.0.*`, `mm_projector.2.*`, ...
"""
from __future__ import annotations

import torch
from torch import nn

from mgm.model.settings import MGMSettings


class IdentityMap(nn.Module):
    """Projector that returns its input (`mm_projector_type: identity`)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x

    @property
    def config(self) -> dict:
        return {"mm_projector_type": "identity"}


def build_vision_projector(settings: MGMSettings, mm_hidden_size: int, hidden_size: int) -> nn.Module:
    """[*, mm_hidden_size] -> [*, hidden_size] for the configured projector type."""
    if settings.projector_type == "linear":
        return nn.Linear(mm_hidden_size, hidden_size)
    if settings.projector_type == "identity":
        return IdentityMap()
    depth = settings.projector_depth()
    assert depth is not None  # validated in MGMSettings
    layers: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
    return nn.Sequential(*layers)


def projector_from_config(config, delay_load: bool = False, **kwargs) -> nn.Module:
    """[*, mm_hidden_size] -> [*, hidden_size] projector of `config.mm_projector_type` (default linear); the
    original `build_vision_projector(config)` signature."""
    return build_vision_projector(MGMSettings.from_config(config), config.mm_hidden_size, config.hidden_size)


class SimpleResBlock(nn.Module):
    """x + MLP(LayerNorm(x)) with a GELU MLP of width `channels` (defined, unused, in the original)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(channels)
        self.proj = nn.Sequential(nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, channels))

    def forward(self, x):
        x = self.pre_norm(x)
        return x + self.proj(x)
