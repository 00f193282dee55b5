"""The vision side of MGM for vLLM, made of mgm's own modules (no vLLM import here).

`MGMVisionModules` holds exactly what the original kept inside its inner model besides the decoder:
the CLIP LR tower, the ConvNeXt HR tower, the projector and the three `vlm_uni_*` mining modules,
built by `MGMMetaModel.build_vision_modules` from the checkpoint's config, so a checkpoint mgm's loader
refuses (missing tower, bad MGM keys) is refused here with the same message. Its state-dict keys are
the checkpoint's `model.*` multimodal keys without `model.`. `encode_images` is mgm's
`MGMMetaForCausalLM.encode_images` (LR crops + global view, mining, projector), not a copy.
`load_checkpoint_weights` applies the original's tower-weight precedence through
`MGMMetaModel.load_tower_weights`.
"""
from __future__ import annotations

import types
from collections.abc import Mapping

import torch
from torch import nn

from mgm.errors import UserError
from mgm.model.arch import MGMMetaForCausalLM, MGMMetaModel


class MGMVisionModules(MGMMetaModel, nn.Module):
    """Towers, projector and mining modules of one MGM checkpoint (architecture only until loaded)."""

    def __init__(self, config, vision_tower_path: str | None = None, vision_tower_aux_path: str | None = None
                 ) -> None:
        nn.Module.__init__(self)
        self.init_multimodal(config, vision_tower_path, vision_tower_aux_path)
        if getattr(self, "vision_tower", None) is None:
            raise UserError("this MGM config names no vision tower (mm_vision_tower); nothing to serve images with")
        self._encoder = _Encoder(self)

    @property
    def embed_tokens(self):
        # mgm's encode_images continues in the token embeddings' dtype; vLLM builds every module in
        # the model dtype, so the projector's dtype is that dtype.
        weight = next(self.mm_projector.parameters(), None)
        dtype = weight.dtype if weight is not None else torch.get_default_dtype()
        return types.SimpleNamespace(weight=torch.empty(0, dtype=dtype))

    @property
    def multimodal_prefixes(self) -> tuple[str, ...]:
        """Checkpoint key prefixes of these modules (`model.vision_tower.`, `model.mm_projector.`, ...)."""
        return tuple(f"model.{name}." for name in self._modules)

    def encode_images(self, images: torch.Tensor, images_aux: torch.Tensor | None) -> torch.Tensor:
        """mgm's `encode_images`: [B, 3, s, s] or HD [B, V, 3, s, s] (+ [B, 3, S, S]) -> [B, T, H]."""
        return self._encoder.encode_images(images, images_aux)

    def load_checkpoint_weights(self, checkpoint_dir: str, state: Mapping[str, torch.Tensor]) -> dict[str, str]:
        """Fill every parameter: towers as `load_pretrained_model` chooses, the rest from `state`.

        `state` holds the checkpoint's multimodal tensors with keys relative to this module. Returns
        {tower: "checkpoint" | "folder"} like `MGMMetaModel.load_tower_weights`.
        """
        sources = self.load_tower_weights(checkpoint_dir)  # loads folder copies itself; raises mgm's errors
        from_folder = tuple(f"{tower}." for tower, source in sources.items() if source == "folder")
        wanted = [k for k in self.state_dict() if not k.startswith(from_folder)]
        missing = [k for k in wanted if k not in state]
        if missing:
            raise UserError(f"{checkpoint_dir}: the checkpoint lacks {len(missing)} multimodal weights "
                            f"(e.g. model.{missing[0]}); it is not a complete MGM checkpoint")
        self.load_state_dict({k: state[k] for k in wanted}, strict=False)
        return sources


class _Encoder(MGMMetaForCausalLM):
    """Lets mgm's image-encoding methods run over `MGMVisionModules` (their `get_model()`)."""

    def __init__(self, inner: MGMVisionModules) -> None:
        self._inner = inner

    def get_model(self) -> MGMVisionModules:
        return self._inner


def check_checkpoint_config(config) -> None:
    """Raise mgm's UserError for a config `load_pretrained_model` would refuse (towers built on meta)."""
    from mgm.model.families import classes_for_model_type
    from mgm.model.settings import MGMSettings

    classes_for_model_type(config.model_type)
    if MGMSettings.from_config(config).vision_tower:
        with torch.device("meta"):
            MGMVisionModules(config)


def clip_tower_config(settings, checkpoint_dir: str):
    """(CLIP tower folder or None, its CLIPVisionConfig), resolved as mgm's loader does (mgm's error if absent)."""
    from mgm.model.vision.registry import clip_config_from, missing_tower_error, resolve_tower_path

    folder = resolve_tower_path(settings.vision_tower, checkpoint_dir)
    clip = clip_config_from(folder, settings.vision_tower)
    if clip is None:
        raise missing_tower_error("LR (CLIP)", "mm_vision_tower", settings.vision_tower, checkpoint_dir, None)
    return folder, clip


