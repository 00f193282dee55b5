"""Low-resolution tower: the ViT of a SigLIP or SigLIP 2 vision model (transformers' `SiglipVisionModel` /
`Siglip2VisionModel`).

The same interface and state-dict layout as `CLIPVisionTower` (`vision_tower.vision_model.*`): the
published folders, full two-tower ones and vision-only ones, hold the vision weights under
`vision_model.*` (or bare), which `_load_clip_folder` already maps. Differences from CLIP:
- no CLS token and no pre-LayerNorm: every output token is a patch token, so `patch` selects them
  all and `cls_patch` is refused (there is no CLS token to keep);
- SigLIP 2 (NaFlex) embeds flattened patches with a Linear and resizes its position grid to the
  image's patch grid; a square image at the tower's native size uses the grid as trained.
The attention-pooling head is not used (MGM reads a hidden layer) and is not built.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from mgm.errors import UserError
from mgm.model.vision.clip import ViTTowerShape


class SiglipVisionTower(ViTTowerShape, nn.Module):
    """[N, 3, S, S] -> [N, (S/patch)², hidden] features of layer `select_layer` (all tokens are patches)."""

    def __init__(self, config, select_layer: int = -2, select_feature: str = "patch",
                 trainable: bool = False, naflex: bool = False) -> None:
        super().__init__()
        if select_feature != "patch":
            raise UserError(f"config key mm_vision_select_feature={select_feature!r}: SigLIP towers have no CLS "
                            "token, so only 'patch' (every output token) is valid")
        from transformers import Siglip2VisionModel, SiglipVisionModel

        self.select_layer = select_layer
        self.select_feature = select_feature
        self.trainable = trainable
        self.naflex = naflex
        config = copy.deepcopy(config)
        if naflex:  # SigLIP 2 configs give the position grid (num_patches), not an image size
            config.image_size = math.isqrt(config.num_patches) * config.patch_size
        model = (Siglip2VisionModel if naflex else SiglipVisionModel)(config)
        self.vision_tower = nn.Module()
        self.vision_tower.vision_model = nn.Module()
        for name in ("embeddings", "encoder", "post_layernorm"):
            setattr(self.vision_tower.vision_model, name, getattr(model, name))
        self._config = config
        self.vision_tower.requires_grad_(False)

    @property
    def config(self):
        return self._config

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] -> [N, (S/p)², D] patch embeddings plus position embeddings."""
        emb = self.vision_tower.vision_model.embeddings
        p = self.config.patch_size
        if self.naflex:
            n, c, h, w = pixel_values.shape
            # The SigLIP 2 processor's patch order: rows of patches, each flattened as (row, col, channel).
            patches = pixel_values.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
            patches = patches.reshape(n, (h // p) * (w // p), p * p * c)
            shapes = torch.tensor([[h // p, w // p]] * n, device=patches.device)
            return emb(patches, shapes)
        patches = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        # Position rows read directly: the module's `position_ids` buffer is not part of the checkpoint.
        return patches + emb.position_embedding.weight[: patches.shape[1]].to(patches.dtype)

    def hidden_state(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Entry `select_layer` of the (1 + num_layers) hidden-state tuple, computing no layer past it."""
        return self.run_layers(self.embed(pixel_values))

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """[N, 3, S, S] (or a list of [3, S, S]) -> [N, (S/patch)², hidden] in the input's dtype."""
        if isinstance(images, list):
            return [self.forward(image.unsqueeze(0)) for image in images]
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            features = self.hidden_state(images.to(device=self.device, dtype=self.dtype))
            return features.to(images.dtype)
