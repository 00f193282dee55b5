"""Typed, validated view of the MGM keys of a model config (docs/original.md#config-keys), read once.

The original scattered `getattr(config, key, default)` calls over the model code; here every reader
goes through `MGMSettings.from_config`, which applies the reader defaults of the original and rejects
combinations the model cannot run (docs/original.md#fixed-defects) with a message naming the key and valid values.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mgm.errors import UserError

_PROJECTOR_RE = re.compile(r"^mlp(\d+)x_gelu$")
VALID_PROJECTORS = ("linear", "identity", "mlp{N}x_gelu")
VALID_SELECT_FEATURES = ("patch", "cls_patch")


@dataclass(frozen=True)
class MGMSettings:
    """The multimodal part of an MGM config, with the original's reader defaults applied."""

    vision_tower: str | None
    vision_tower_aux: str | None
    mm_hidden_size: int | None
    mm_hidden_size_aux: int | None
    projector_type: str
    select_layer: int
    select_feature: str
    image_size_aux: int
    image_grid: int
    image_global: bool
    image_aspect_ratio: str | None
    optimize_vision_tower: bool
    optimize_vision_tower_aux: bool
    padding_side: str
    model_max_length: int | None
    tune_mm_mlp_adapter: bool
    mm_use_im_start_end: bool
    mm_use_im_patch_token: bool
    drop_path: bool

    @property
    def has_aux(self) -> bool:
        return bool(self.vision_tower_aux)

    @property
    def num_views(self) -> int:
        """LR views per image: g² crops (+1 global view in HD mode)."""
        return self.image_grid**2 + (1 if self.image_global and self.image_grid > 1 else 0)

    @classmethod
    def from_config(cls, config: Any) -> "MGMSettings":
        get = lambda key, default=None: getattr(config, key, default)  # noqa: E731
        settings = cls(
            vision_tower=get("mm_vision_tower") or get("vision_tower"),
            vision_tower_aux=get("mm_vision_tower_aux") or get("vision_tower_aux"),
            mm_hidden_size=get("mm_hidden_size"),
            mm_hidden_size_aux=get("mm_hidden_size_aux"),
            projector_type=get("mm_projector_type") or "linear",
            select_layer=int(get("mm_vision_select_layer", -2) if get("mm_vision_select_layer") is not None else -2),
            select_feature=get("mm_vision_select_feature") or "patch",
            image_size_aux=int(get("image_size_aux") or 320),
            image_grid=int(get("image_grid") or 1),
            image_global=bool(get("image_global", False)),
            image_aspect_ratio=get("image_aspect_ratio"),
            optimize_vision_tower=bool(get("optimize_vision_tower", False)),
            optimize_vision_tower_aux=bool(get("optimize_vision_tower_aux", False)),
            padding_side=get("tokenizer_padding_side") or "right",
            model_max_length=get("tokenizer_model_max_length"),
            tune_mm_mlp_adapter=bool(get("tune_mm_mlp_adapter", False)),
            mm_use_im_start_end=bool(get("mm_use_im_start_end", False)),
            # The original builder adds <im_patch> when the key is absent (docs/original.md#load-pretrained-model).
            mm_use_im_patch_token=bool(get("mm_use_im_patch_token", True)),
            drop_path=bool(get("drop_path", True)),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject combinations the model cannot run (docs/original.md#fixed-defects)."""
        if self.projector_type not in ("linear", "identity") and not _PROJECTOR_RE.match(self.projector_type):
            raise UserError(
                f"config key mm_projector_type={self.projector_type!r} is unknown; valid: {', '.join(VALID_PROJECTORS)}"
            )
        if self.select_feature not in VALID_SELECT_FEATURES:
            raise UserError(
                f"config key mm_vision_select_feature={self.select_feature!r} is unknown; valid: {VALID_SELECT_FEATURES}"
            )
        if self.image_grid < 1:
            raise UserError(f"config key image_grid={self.image_grid} must be >= 1")
        if self.image_global and self.image_grid == 1:
            raise UserError(
                "config keys image_global=true with image_grid=1 cannot run (the global view exists only in HD "
                "mode); set image_grid >= 2 or image_global=false"
            )
        if self.has_aux and self.select_feature == "cls_patch":
            raise UserError(
                "config key mm_vision_select_feature='cls_patch' cannot be used with patch info mining "
                "(mm_vision_tower_aux is set): the LR tokens must form a square grid; use 'patch'"
            )
        if self.has_aux and self.projector_type == "identity" and self.mm_hidden_size is None:
            raise UserError("config key mm_hidden_size is required with mm_vision_tower_aux")
        if self.padding_side not in ("left", "right"):
            raise UserError(f"config key tokenizer_padding_side={self.padding_side!r}; valid: 'left', 'right'")

    def projector_depth(self) -> int | None:
        """N of `mlp{N}x_gelu`, or None for linear/identity."""
        match = _PROJECTOR_RE.match(self.projector_type)
        return int(match.group(1)) if match else None
