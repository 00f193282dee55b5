"""Low-resolution tower: the CLIP ViT of a Hugging Face `CLIPVisionModel` (docs/original.md#lr-tower).

State-dict keys are `vision_tower.vision_model.*` of this module, i.e.
`model.vision_tower.vision_tower.vision_model.*` in a full checkpoint, exactly as the original saved
them. transformers 5 dropped the `vision_model.` level from `CLIPVisionModel` and renames keys while
loading any model that contains one, so the CLIP parts are held in plain modules here: the layout is
ours to keep, whatever the library does to its own classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from mgm.model.fast_linear import linear

# Architecture of the released LR tower, used only when its folder cannot be found but the checkpoint
# carries the weights (openai/clip-vit-large-patch14-336).
KNOWN_CLIP_CONFIGS: dict[str, dict] = {
    "clip-vit-large-patch14-336": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    ),
}


class ViTTowerShape:
    """What a ViT tower (CLIP, SigLIP) tells about itself from its `config` and its
    `vision_tower.vision_model.embeddings.patch_embedding` (the original's attribute names)."""

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.vision_model.embeddings.patch_embedding.weight.device

    def run_layers(self, hidden: torch.Tensor) -> torch.Tensor:
        """Embeddings [N, T, D] -> entry `select_layer` of the (1 + num_layers) hidden states, computing no
        layer past it (SDPA, fused residuals when no gradient is needed)."""
        layers = self.vision_tower.vision_model.encoder.layers
        fast = not torch.is_grad_enabled()
        for layer in layers[:self.select_layer % (len(layers) + 1)]:
            hidden = _layer_eval(layer, hidden) if fast else layer(hidden, None)
        return hidden


class CLIPVisionTower(ViTTowerShape, nn.Module):
    """[N, 3, S, S] -> [N, (S/patch)², hidden] features of layer `select_layer` (CLS dropped for `patch`)."""

    def __init__(self, config: CLIPVisionConfig, select_layer: int = -2, select_feature: str = "patch",
                 trainable: bool = False) -> None:
        super().__init__()
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.trainable = trainable
        clip = CLIPVisionModel(config)
        self.vision_tower = nn.Module()
        self.vision_tower.vision_model = nn.Module()
        for name in ("embeddings", "pre_layrnorm", "encoder", "post_layernorm"):
            setattr(self.vision_tower.vision_model, name, getattr(clip, name))
        self._config = config
        self.vision_tower.requires_grad_(False)

    @property
    def config(self) -> CLIPVisionConfig:
        return self._config

    def hidden_state(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Entry `select_layer` of the (1 + num_layers) hidden-state tuple, computing no layer past it."""
        vm = self.vision_tower.vision_model
        emb = vm.embeddings
        # Embeddings computed here rather than by the module: its `position_ids` buffer is not part of
        # the checkpoint and is not re-initialised when the tower is nested in an LLM's from_pretrained.
        patches = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        cls = emb.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        tokens = torch.cat([cls, patches], dim=1)
        return self.run_layers(vm.pre_layrnorm(tokens + emb.position_embedding.weight[: tokens.shape[1]].to(tokens.dtype)))

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """[N, 3, S, S] (or a list of [3, S, S]) -> [N, (S/patch)², hidden] in the input's dtype."""
        if isinstance(images, list):
            return [self.forward(image.unsqueeze(0)) for image in images]
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            features = self.hidden_state(images.to(device=self.device, dtype=self.dtype))
            if self.select_feature == "patch":
                features = features[:, 1:]
            return features.to(images.dtype)


def _layer_eval(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """One CLIPEncoderLayer without autograd: [N, T, D] -> [N, T, D], the same function as its forward
    with SDPA attention, the linears through oneDNN (mgm.model.fast_linear) and in-place residuals."""
    attn = layer.self_attn
    if attn.training and attn.dropout > 0:
        return layer(hidden, None)
    n, t, d = hidden.shape
    x = layer.layer_norm1(hidden)
    q, k, v = (linear(x, proj).view(n, t, attn.num_heads, attn.head_dim).transpose(1, 2)
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale).transpose(1, 2).reshape(n, t, d)
    hidden = hidden + linear(out, attn.out_proj)
    x = layer.mlp.activation_fn(linear(layer.layer_norm2(hidden), layer.mlp.fc1))
    return hidden.add_(linear(x, layer.mlp.fc2))
