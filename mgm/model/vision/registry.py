"""Where the tower folders are, and how to build each tower's architecture from them.

Tower paths recorded in old configs are often relative (`model_zoo/OpenAI/...`). They resolve against,
in order: an explicit override, the `MGM_TOWER_ROOT` folders (by path and by folder name), the working
directory, the checkpoint folder (and its parent). The tower TYPE never comes from the path text: the
LR tower is a CLIP vision model (config.json), the HR tower an OpenCLIP ConvNeXt (open_clip_config.json).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import CLIPVisionConfig

from mgm.errors import UserError
from mgm.model.vision.clip import KNOWN_CLIP_CONFIGS
from mgm.model.vision.convnext import ConvNeXtSpec

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")


def candidate_paths(recorded: str, checkpoint_dir: str | None, override: str | None = None) -> list[Path]:
    """Every place a recorded tower path may refer to, in lookup order."""
    out: list[Path] = []
    if override:
        out.append(Path(override).expanduser())
    recorded_path = Path(recorded).expanduser()
    for root in filter(None, os.environ.get("MGM_TOWER_ROOT", "").split(os.pathsep)):
        out += [Path(root) / recorded_path, Path(root) / recorded_path.name]
    out.append(recorded_path if recorded_path.is_absolute() else Path.cwd() / recorded_path)
    if checkpoint_dir and not recorded_path.is_absolute():
        ckpt = Path(checkpoint_dir)
        out += [ckpt / recorded_path, ckpt.parent / recorded_path]
    seen: set[str] = set()
    unique = []
    for p in out:
        if str(p) not in seen:
            seen.add(str(p))
            unique.append(p)
    return unique


def resolve_tower_path(recorded: str, checkpoint_dir: str | None, override: str | None = None) -> Path | None:
    """The first existing folder among `candidate_paths`, or None."""
    for path in candidate_paths(recorded, checkpoint_dir, override):
        if path.is_dir():
            return path
    return None


def missing_tower_error(kind: str, key: str, recorded: str, checkpoint_dir: str | None, override: str | None) -> UserError:
    looked = "\n  ".join(str(p) for p in candidate_paths(recorded, checkpoint_dir, override))
    return UserError(
        f"{kind} tower {recorded!r} (config key {key}) was not found, and the checkpoint alone does not define "
        f"it (its architecture or weights are missing). Looked in:\n  {looked}\nPut the tower folder at one of these places, set MGM_TOWER_ROOT, or "
        f"pass vision_tower_path=/vision_tower_aux_path= to load_pretrained_model."
    )


def clip_config_from(path: Path | None, recorded: str) -> CLIPVisionConfig | None:
    """CLIPVisionConfig from a CLIP or CLIPVision folder; the released tower's known config as a fallback."""
    if path is not None and (path / "config.json").is_file():
        return CLIPVisionConfig.from_pretrained(str(path))
    known = KNOWN_CLIP_CONFIGS.get(Path(recorded).name)
    return CLIPVisionConfig(**known) if known else None


def convnext_spec_from(path: Path | None) -> ConvNeXtSpec | None:
    """ConvNeXt architecture from `open_clip_config.json`, else inferred from the folder's weights."""
    if path is None:
        return None
    cfg_file = path / OPEN_CLIP_CONFIG
    if cfg_file.is_file():
        spec = ConvNeXtSpec.from_open_clip_config(json.loads(cfg_file.read_text()))
        if spec is not None:
            return spec
    weights = load_open_clip_weights(path)
    if weights is not None:
        spec = ConvNeXtSpec.from_state_dict(weights, "visual.trunk.")
        if spec is not None:
            return spec
    return _legacy_spec_from_name(path)


def _legacy_spec_from_name(path: Path) -> ConvNeXtSpec | None:
    """Last resort for old folders with neither a usable json nor weights: the original's name rules."""
    from mgm.model.vision.convnext import TIMM_CONVNEXT_ARCHS

    name = str(path)
    for needles, arch in ((("convnext", "large", "d-320"), "convnext_large"),
                          (("convnext", "base", "w-320"), "convnext_base"),
                          (("convnext", "xxlarge"), "convnext_xxlarge")):
        if all(n in name for n in needles):
            return ConvNeXtSpec(*TIMM_CONVNEXT_ARCHS[arch])
    return None


def load_open_clip_weights(path: Path) -> dict | None:
    """Raw open_clip state dict of a tower folder (None if the folder has no weights file)."""
    import torch

    for name in OPEN_CLIP_WEIGHTS:
        file = path / name
        if file.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(file))
            state = torch.load(str(file), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return None
