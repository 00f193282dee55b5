"""Towers from a config or model-args object (the original `multimodal_encoder/builder.py` functions).

`build_vision_tower(cfg)` reads `mm_vision_tower` (else `vision_tower`), `mm_vision_select_layer`,
`mm_vision_select_feature`, `optimize_vision_tower`; `build_vision_tower_aux(cfg)` reads
`mm_vision_tower_aux` (else `vision_tower_aux`), `drop_path`, `optimize_vision_tower_aux`, with the
defaults of `MGMSettings` (the original's reader defaults). Paths resolve
as for a checkpoint (`mgm.model.vision.registry`); the tower type comes from the folder's files, not its
name. Weights are loaded from the folder unless `delay_load=True` (architecture only, as the original).
"""
from __future__ import annotations

from mgm.model.settings import MGMSettings
from mgm.model.vision.clip import CLIPVisionTower
from mgm.model.vision.convnext import ConvNeXtTower, strip_open_clip_state_dict
from mgm.model.vision.registry import clip_config_from, convnext_spec_from, load_open_clip_weights, resolve_tower_path


def _folder(cfg, keys: tuple[str, str]):
    recorded = getattr(cfg, keys[0], None) or getattr(cfg, keys[1], None)
    folder = resolve_tower_path(recorded, None) if recorded else None
    if folder is None:
        raise ValueError(f"Not find vision tower: {recorded}")  # the original's message
    return recorded, folder


def build_vision_tower(vision_tower_cfg, **kwargs) -> CLIPVisionTower:
    """The LR CLIP tower named by `vision_tower_cfg` (weights loaded unless `delay_load=True`)."""
    from mgm.model.vision_encoder import load_clip_folder

    recorded, folder = _folder(vision_tower_cfg, ("mm_vision_tower", "vision_tower"))
    clip_cfg = clip_config_from(folder, recorded)
    if clip_cfg is None:
        raise ValueError(f"{folder} is not a CLIP vision tower folder (no config.json)")
    s = MGMSettings.from_config(vision_tower_cfg)
    tower = CLIPVisionTower(clip_cfg, s.select_layer, s.select_feature, s.optimize_vision_tower)
    if not kwargs.get("delay_load", False):
        load_clip_folder(tower, folder)
    return tower


def build_vision_tower_aux(vision_tower_cfg, **kwargs) -> ConvNeXtTower:
    """The HR ConvNeXt tower named by `vision_tower_cfg` (weights loaded unless `delay_load=True`)."""
    _, folder = _folder(vision_tower_cfg, ("mm_vision_tower_aux", "vision_tower_aux"))
    spec = convnext_spec_from(folder)
    if spec is None:
        raise ValueError(f"{folder} is not an OpenCLIP ConvNeXt folder (no usable open_clip_config.json or weights)")
    s = MGMSettings.from_config(vision_tower_cfg)
    tower = ConvNeXtTower(spec, drop_path=s.drop_path, trainable=s.optimize_vision_tower_aux)
    if not kwargs.get("delay_load", False):
        tower.load_state_dict(strip_open_clip_state_dict(load_open_clip_weights(folder) or {}), strict=True)
    return tower
