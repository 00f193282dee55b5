"""The vision side of MGM for vLLM: mgm's own `MGMVisionEncoder` (no vLLM import here).

`MGMVisionModules` is the encoder the causal LM composes, built from the checkpoint's config (a
checkpoint mgm's loader refuses, missing tower or bad MGM keys, is refused here with the same
message), plus what vLLM's weight loading needs: its state-dict keys are the checkpoint's `model.*`
multimodal keys without `model.`, and `load_checkpoint_weights` applies the original's tower-weight
precedence (`MGMVisionEncoder.load_tower_weights`).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from mgm.errors import UserError
from mgm.model.vision_encoder import MGMVisionEncoder


class MGMVisionModules(MGMVisionEncoder):
    """The checkpoint's vision encoder (architecture only until loaded), with vLLM's weight loading."""

    @property
    def multimodal_prefixes(self) -> tuple[str, ...]:
        """Checkpoint key prefixes of these modules (`model.vision_tower.`, `model.mm_projector.`, ...)."""
        return tuple(f"model.{name}." for name in self._modules)

    def encode_images(self, images: torch.Tensor, images_aux: torch.Tensor | None) -> torch.Tensor:
        """[B, 3, s, s] or HD [B, V, 3, s, s] (+ [B, 3, S, S]) -> [B, T, H], in the projector's dtype."""
        return self(images, images_aux)

    def load_checkpoint_weights(self, checkpoint_dir: str, state: Mapping[str, torch.Tensor]) -> dict[str, str]:
        """Fill every parameter: towers as `load_pretrained_model` chooses, the rest from `state`.

        `state` holds the checkpoint's multimodal tensors with keys relative to this module. Returns
        {tower: "checkpoint" | "folder"} like `MGMVisionEncoder.load_tower_weights`.
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


