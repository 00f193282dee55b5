"""Tiny vision-tower folders in the released on-disk formats: an HF CLIP folder and an OpenCLIP ConvNeXt folder.

- `build_clip_tower(dir, seed)` writes what `openai/clip-vit-large-patch14-336` looks like on disk, shrunk:
  a full `CLIPModel` (vision + a 1-layer text tower, keys `vision_model.*` / `text_model.*` /
  `visual_projection.weight` / ...) saved with `save_pretrained`, plus a CLIP `preprocessor_config.json`.
  `CLIPVisionModel.from_pretrained(dir)` takes the vision half. Vision: hidden 32, 3 layers, 2 heads,
  MLP 64, image 32, patch 4 -> 8x8 = 64 patch tokens (+ CLS).
- `build_convnext_tower(dir, seed)` writes what
  `laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup` looks like, shrunk: `open_clip_config.json`
  and `open_clip_pytorch_model.bin` (a `torch.save`d open_clip CLIP state dict: the timm ConvNeXt trunk under
  `visual.trunk.` with timm's names, `visual.trunk.head.norm.*`, `visual.head.mlp.*` and the text tower).
  The tensors are written literally from the shapes (no timm/open_clip at build time); tests check that timm's
  `ConvNeXt` and open_clip's `CLIP` load the file strictly. Depths 1/1/1/1, dims 8/16/32/64 -> the MGM aux
  features have sum(dims) = 120 channels at stage-0 resolution S/4.

Both are deterministic functions of the seed. Run `python -m mgm.zoo.tiny --help` to build the whole zoo.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mgm.zoo.random_weights import randomize_, seeded_generator

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

CLIP_TOWER_NAME = "clip-vit-tiny-patch4-32"
CONVNEXT_TOWER_NAME = "openclip-convnext-tiny"


@dataclass(frozen=True)
class ClipTowerSpec:
    """Sizes of the tiny CLIP ViT (vision half; the text half only fills out the folder)."""

    hidden_size: int = 32
    num_hidden_layers: int = 3
    num_attention_heads: int = 2
    intermediate_size: int = 64
    image_size: int = 32
    patch_size: int = 4
    projection_dim: int = 32

    @property
    def num_patches(self) -> int:
        """LR tokens per image after dropping CLS: (image_size / patch_size)²."""
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class ConvNextTowerSpec:
    """Sizes of the tiny OpenCLIP ConvNeXt (trunk as timm builds it; text tower only fills out the file)."""

    depths: tuple[int, ...] = (1, 1, 1, 1)
    dims: tuple[int, ...] = (8, 16, 32, 64)
    embed_dim: int = 32
    image_size: int = 64
    timm_model_name: str = "convnext_tiny_mgm"
    text_cfg: dict[str, int] = field(default_factory=lambda: {
        "context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1})

    @property
    def hidden_size(self) -> int:
        """Channels of the MGM aux feature map: all stage outputs concatenated (2880 for ConvNeXt-L)."""
        return sum(self.dims)


def build_clip_tower(out_dir: str | Path, seed: int, spec: ClipTowerSpec = ClipTowerSpec(),
                     preprocessor_style: str = "current") -> Path:
    """Write a tiny CLIP folder (config.json, model.safetensors, preprocessor_config.json).

    Args:
        out_dir: folder to write.
        seed: weight seed.
        spec: tower sizes.
        preprocessor_style: "current" = the keys transformers' CLIPImageProcessor saves today
            (`size: {"shortest_edge": S}`, `crop_size: {"height": S, "width": S}`, ...); "legacy" = the
            file as the openai repo ships it (`size: S`, `crop_size: S`, `feature_extractor_type`).

    Returns:
        The folder.
    """
    from transformers import CLIPConfig, CLIPModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vision = dict(hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                  num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
                  image_size=spec.image_size, patch_size=spec.patch_size, projection_dim=spec.projection_dim,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                max_position_embeddings=16, projection_dim=spec.projection_dim, hidden_act="quick_gelu",
                bos_token_id=62, eos_token_id=63, pad_token_id=1)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=spec.projection_dim)
    model = CLIPModel(config).eval()
    randomize_(model, seeded_generator(seed, "tower/clip"))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.07))
    model.save_pretrained(str(out))
    (out / "preprocessor_config.json").write_text(
        json.dumps(clip_preprocessor_config(spec.image_size, preprocessor_style), indent=2) + "\n")
    return out


def clip_preprocessor_config(size: int, style: str = "current") -> dict[str, object]:
    """preprocessor_config.json of the OpenAI CLIP processor at `size` (docs/original.md#image-preprocessing)."""
    if style == "legacy":
        return {"crop_size": size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(CLIP_MEAN),
                "image_std": list(CLIP_STD), "resample": 3, "size": size}
    if style != "current":
        raise ValueError(f"preprocessor_style must be 'current' or 'legacy', got {style!r}")
    return {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(CLIP_STD),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": size},
    }


def convnext_open_clip_config(spec: ConvNextTowerSpec = ConvNextTowerSpec()) -> dict[str, object]:
    """open_clip_config.json of the tiny ConvNeXt (released layout + `depths`/`dims`, which the tiny net needs)."""
    return {
        "model_cfg": {
            "embed_dim": spec.embed_dim,
            "vision_cfg": {
                "timm_model_name": spec.timm_model_name,
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "mlp",
                "timm_drop": 0.0,
                "timm_drop_path": 0.1,
                "image_size": spec.image_size,
                "depths": list(spec.depths),
                "dims": list(spec.dims),
            },
            "text_cfg": dict(spec.text_cfg),
        },
        "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
    }


def convnext_trunk_shapes(spec: ConvNextTowerSpec = ConvNextTowerSpec()) -> dict[str, tuple[int, ...]]:
    """Shapes of the timm ConvNeXt trunk parameters, keyed by timm name (`stem.0.weight`, `stages.1...`).

    The names are those of timm's `ConvNeXt` (docs/original.md#checkpoint-layout, Appendix B): patch stem conv 4x4/4 + LayerNorm2d;
    stages 1..3 open with LayerNorm2d + conv 2x2/2; each block has a 7x7 depthwise conv, LayerNorm, MLP with
    ratio 4 and a layer-scale `gamma`.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    d0 = spec.dims[0]
    shapes.update({"stem.0.weight": (d0, 3, 4, 4), "stem.0.bias": (d0,), "stem.1.weight": (d0,),
                   "stem.1.bias": (d0,)})
    for s, (depth, dim) in enumerate(zip(spec.depths, spec.dims)):
        p = f"stages.{s}"
        if s > 0:
            prev = spec.dims[s - 1]
            shapes.update({f"{p}.downsample.0.weight": (prev,), f"{p}.downsample.0.bias": (prev,),
                           f"{p}.downsample.1.weight": (dim, prev, 2, 2), f"{p}.downsample.1.bias": (dim,)})
        for b in range(depth):
            q = f"{p}.blocks.{b}"
            shapes.update({f"{q}.gamma": (dim,), f"{q}.conv_dw.weight": (dim, 1, 7, 7), f"{q}.conv_dw.bias": (dim,),
                           f"{q}.norm.weight": (dim,), f"{q}.norm.bias": (dim,),
                           f"{q}.mlp.fc1.weight": (4 * dim, dim), f"{q}.mlp.fc1.bias": (4 * dim,),
                           f"{q}.mlp.fc2.weight": (dim, 4 * dim), f"{q}.mlp.fc2.bias": (dim,)})
    return shapes


def convnext_open_clip_state_dict(seed: int, spec: ConvNextTowerSpec = ConvNextTowerSpec()) -> dict[str, torch.Tensor]:
    """Random open_clip CLIP state dict with the tiny ConvNeXt trunk (what open_clip_pytorch_model.bin holds).

    Returns:
        {key: tensor}; trunk keys `visual.trunk.stem.*` / `visual.trunk.stages.*`, plus `visual.trunk.head.norm.*`,
        `visual.head.mlp.*` and the text tower (`token_embedding.weight`, `positional_embedding`,
        `transformer.resblocks.*`, `ln_final.*`, `text_projection`, `logit_scale`) that an MGM loader must skip.
    """
    shapes: dict[str, tuple[int, ...]] = {f"visual.trunk.{k}": v for k, v in convnext_trunk_shapes(spec).items()}
    last, emb = spec.dims[-1], spec.embed_dim
    shapes.update({"visual.trunk.head.norm.weight": (last,), "visual.trunk.head.norm.bias": (last,),
                   "visual.head.mlp.fc1.weight": (2 * emb, last), "visual.head.mlp.fc1.bias": (2 * emb,),
                   "visual.head.mlp.fc2.weight": (emb, 2 * emb)})
    t = spec.text_cfg
    width, ctx, vocab = t["width"], t["context_length"], t["vocab_size"]
    shapes.update({"positional_embedding": (ctx, width), "text_projection": (width, emb), "logit_scale": (),
                   "token_embedding.weight": (vocab, width)})
    for i in range(t["layers"]):
        r = f"transformer.resblocks.{i}"
        shapes.update({f"{r}.ln_1.weight": (width,), f"{r}.ln_1.bias": (width,),
                       f"{r}.attn.in_proj_weight": (3 * width, width), f"{r}.attn.in_proj_bias": (3 * width,),
                       f"{r}.attn.out_proj.weight": (width, width), f"{r}.attn.out_proj.bias": (width,),
                       f"{r}.ln_2.weight": (width,), f"{r}.ln_2.bias": (width,),
                       f"{r}.mlp.c_fc.weight": (4 * width, width), f"{r}.mlp.c_fc.bias": (4 * width,),
                       f"{r}.mlp.c_proj.weight": (width, 4 * width), f"{r}.mlp.c_proj.bias": (width,)})
    shapes.update({"ln_final.weight": (width,), "ln_final.bias": (width,)})
    gen = seeded_generator(seed, "tower/convnext")
    state = {k: torch.empty(v) for k, v in shapes.items()}
    randomize_(state, gen)
    state["logit_scale"].fill_(math.log(1 / 0.07))
    return state


def build_convnext_tower(out_dir: str | Path, seed: int, spec: ConvNextTowerSpec = ConvNextTowerSpec()) -> Path:
    """Write a tiny OpenCLIP ConvNeXt folder (open_clip_config.json + open_clip_pytorch_model.bin).

    Args:
        out_dir: folder to write; keep "openclip" and "convnext" in its path (the original picks the tower
            class from those substrings).
        seed: weight seed.
        spec: tower sizes.

    Returns:
        The folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps(convnext_open_clip_config(spec), indent=2) + "\n")
    torch.save(convnext_open_clip_state_dict(seed, spec), out / "open_clip_pytorch_model.bin")
    return out
