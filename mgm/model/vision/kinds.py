"""Which tower a folder holds, read from its config files (never from the path), and how to build it.

LR (low-resolution ViT) kinds, from `config.json`'s `model_type` (a full two-tower folder or a
vision-only one):
- `clip`: `clip` / `clip_vision_model` -> `CLIPVisionTower` (a CLS token, dropped by `patch`);
- `siglip`: `siglip` / `siglip_vision_model` -> `SiglipVisionTower` (no CLS token);
- `siglip2`: `siglip2` / `siglip2_vision_model` -> `SiglipVisionTower` in NaFlex mode.
A missing folder falls back to the released CLIP tower's known config (as before).

HR (high-resolution ConvNeXt) kinds:
- `open_clip`: `open_clip_config.json` or open_clip weights (`visual.trunk.*`);
- `timm`: a timm folder, `config.json` with `architecture` (ConvNeXt or ConvNeXt-V2) and timm's keys
  (`stem.*`, `stages.*`).
"""
from __future__ import annotations

import json
from pathlib import Path

from mgm.errors import UserError
from mgm.model.vision.convnext import TIMM_CONVNEXT_ARCHS, ConvNeXtSpec

LR_MODEL_TYPES = {"clip": "clip", "clip_vision_model": "clip", "siglip": "siglip",
                  "siglip_vision_model": "siglip", "siglip2": "siglip2", "siglip2_vision_model": "siglip2"}
HR_KINDS = ("open_clip (open_clip_config.json / open_clip weights)",
            "timm (config.json with a ConvNeXt or ConvNeXt-V2 `architecture`)")
# timm ConvNeXt-V2 trunks: GRN in the MLP, no layer scale.
TIMM_CONVNEXT_V2_ARCHS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnextv2_atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "convnextv2_femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "convnextv2_pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "convnextv2_nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "convnextv2_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnextv2_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnextv2_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnextv2_huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}


def _read_json(file: Path) -> dict | None:
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{file} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else None


def lr_kind(folder: Path | None) -> str | None:
    """'clip' / 'siglip' / 'siglip2' from the folder's config.json; None without a folder or config."""
    if folder is None:
        return None
    cfg = _read_json(folder / "config.json")
    if cfg is None:
        return None
    model_type = cfg.get("model_type")
    if model_type not in LR_MODEL_TYPES:
        raise UserError(f"LR tower folder {folder}: config.json model_type {model_type!r} is not a known tower "
                        f"kind; valid: {', '.join(sorted(LR_MODEL_TYPES))} (CLIP, SigLIP, SigLIP 2; full "
                        "two-tower folders and vision-only folders)")
    return LR_MODEL_TYPES[model_type]


def lr_vision_config(folder: Path, kind: str):
    """The vision config of a full two-tower or a vision-only folder of `kind`."""
    from transformers import CLIPVisionConfig, Siglip2VisionConfig, SiglipVisionConfig

    cls = {"clip": CLIPVisionConfig, "siglip": SiglipVisionConfig, "siglip2": Siglip2VisionConfig}[kind]
    cfg = _read_json(folder / "config.json") or {}
    values = dict(cfg.get("vision_config") or {}) if "vision_config" in cfg else dict(cfg)
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path"):
        values.pop(key, None)
    return cls(**values)


def build_lr_tower(folder: Path | None, recorded: str, settings):
    """The LR tower for `settings` (select layer/feature, trainable) from its folder; None if unknown."""
    from mgm.model.vision.clip import CLIPVisionTower
    from mgm.model.vision.registry import clip_config_from

    kind = lr_kind(folder)
    if kind in ("siglip", "siglip2"):
        from mgm.model.vision.siglip import SiglipVisionTower

        return SiglipVisionTower(lr_vision_config(folder, kind), settings.select_layer, settings.select_feature,
                                 settings.optimize_vision_tower, naflex=kind == "siglip2")
    clip_cfg = clip_config_from(folder, recorded)
    if clip_cfg is None:
        return None
    return CLIPVisionTower(clip_cfg, settings.select_layer, settings.select_feature, settings.optimize_vision_tower)


def timm_config(folder: Path | None) -> dict | None:
    """timm's config.json of a folder (one with an `architecture`), else None."""
    if folder is None:
        return None
    cfg = _read_json(folder / "config.json")
    return cfg if cfg is not None and isinstance(cfg.get("architecture"), str) else None


def timm_convnext_spec(cfg: dict, folder: Path) -> ConvNeXtSpec:
    """ConvNeXt / ConvNeXt-V2 spec of a timm config (`model_args` depths/dims win over the name's)."""
    arch = cfg["architecture"].split(".")[0]
    args = cfg.get("model_args") or {}
    if arch in TIMM_CONVNEXT_V2_ARCHS:
        depths, dims = TIMM_CONVNEXT_V2_ARCHS[arch]
        v2 = True
    elif arch in TIMM_CONVNEXT_ARCHS:
        depths, dims = TIMM_CONVNEXT_ARCHS[arch]
        v2 = False
    elif args.get("depths") and args.get("dims"):
        depths, dims, v2 = args["depths"], args["dims"], bool(args.get("use_grn"))
    else:
        known = sorted(TIMM_CONVNEXT_ARCHS) + sorted(TIMM_CONVNEXT_V2_ARCHS)
        raise UserError(f"HR tower folder {folder}: timm architecture {arch!r} is not a ConvNeXt; valid: "
                        f"{', '.join(known)} (or model_args with depths and dims)")
    depths = tuple(args.get("depths") or depths)
    dims = tuple(args.get("dims") or dims)
    return ConvNeXtSpec(depths, dims, drop_path_rate=float(args.get("drop_path_rate", 0.0)),
                        ls_init_value=None if v2 else 1e-6, use_grn=v2)


def hr_spec_from(folder: Path | None) -> ConvNeXtSpec | None:
    """The HR tower's architecture from a timm or an open_clip folder (None when neither says)."""
    from mgm.model.vision.registry import convnext_spec_from

    cfg = timm_config(folder)
    if cfg is not None:
        return timm_convnext_spec(cfg, folder)
    return convnext_spec_from(folder)


def hr_folder_state(folder: Path | None) -> dict | None:
    """The HR tower's weights in the tower's own keys (`vision_stem.*`, `vision_stages.*`), or None."""
    from mgm.model.vision.convnext import strip_open_clip_state_dict
    from mgm.model.vision.registry import load_open_clip_weights

    if folder is None:
        return None
    if timm_config(folder) is not None:
        return _timm_state(folder)
    raw = load_open_clip_weights(folder)
    return strip_open_clip_state_dict(raw) if raw is not None else None


def _timm_state(folder: Path) -> dict | None:
    import torch

    for name in ("model.safetensors", "pytorch_model.bin"):
        file = folder / name
        if file.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                state = load_file(str(file))
            else:
                state = torch.load(str(file), map_location="cpu", weights_only=True)
            out = {}
            for key, value in state.items():
                if key.startswith(("stem.", "stages.")):
                    out["vision_" + key] = value
            return out
    return None
