"""High-resolution tower: the ConvNeXt trunk of an OpenCLIP model (docs/original.md#hr-tower).

Only the stem and the four stages are kept (`vision_stem`, `vision_stages`, the original's attribute
names and hence state-dict keys). Every stage output is resized to the stage-0 map and concatenated:
[N, 3, S, S] -> [N, Σ dims, S/4, S/4]. The architecture is read from `open_clip_config.json`
(`timm_model_name`, optional explicit `depths`/`dims`) or inferred from the weights, never from the
folder name.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mgm.model.fast_linear import linear
from mgm.model.vision.multiscale import MultiScaleMap

# timm/open_clip ConvNeXt trunks used by MGM variants (convnext_large_d_320, convnext_base_w_320,
# convnext_xxlarge all name their timm trunk in `vision_cfg.timm_model_name`).
TIMM_CONVNEXT_ARCHS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext_xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
    "convnext_xxlarge": ((3, 4, 30, 3), (384, 768, 1536, 3072)),
}
# open_clip model names -> their timm trunk, for configs that only name the open_clip model.
OPEN_CLIP_MODELS: dict[str, str] = {
    "convnext_large_d_320": "convnext_large",
    "convnext_large_d": "convnext_large",
    "convnext_base_w_320": "convnext_base",
    "convnext_base_w": "convnext_base",
    "convnext_xxlarge": "convnext_xxlarge",
}


@dataclass(frozen=True)
class ConvNeXtSpec:
    """Architecture of a ConvNeXt trunk."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    drop_path_rate: float = 0.1
    ls_init_value: float | None = 1e-6  # None: no layer scale (ConvNeXt-V2)
    conv_mlp: bool = False
    use_grn: bool = False  # ConvNeXt-V2's global response normalisation in the MLP

    @property
    def hidden_size(self) -> int:
        return sum(self.dims)

    @classmethod
    def from_open_clip_config(cls, cfg: dict) -> "ConvNeXtSpec | None":
        """From an `open_clip_config.json` dict (with or without the `model_cfg` wrapper); None if unknown."""
        model_cfg = cfg.get("model_cfg", cfg)
        vision = model_cfg.get("vision_cfg", {})
        drop_path = float(vision.get("timm_drop_path", 0.1) or 0.0)
        if vision.get("depths") and vision.get("dims"):
            return cls(tuple(vision["depths"]), tuple(vision["dims"]), drop_path)
        name = vision.get("timm_model_name") or OPEN_CLIP_MODELS.get(cfg.get("model_name", ""), "")
        if name in TIMM_CONVNEXT_ARCHS:
            depths, dims = TIMM_CONVNEXT_ARCHS[name]
            return cls(depths, dims, drop_path)
        return None

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], prefix: str) -> "ConvNeXtSpec | None":
        """Infer depths/dims from trunk weights whose keys start with `prefix` + 'stem.' / 'stages.'."""
        stem = state.get(prefix + "stem.0.weight")
        if stem is None:
            return None
        blocks: dict[int, int] = {}
        dims: dict[int, int] = {}
        pattern = re.compile(re.escape(prefix) + r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.weight$")
        for key, value in state.items():
            m = pattern.match(key)
            if m:
                s, b = int(m.group(1)), int(m.group(2))
                blocks[s] = max(blocks.get(s, 0), b + 1)
                dims[s] = value.shape[0]
        if not blocks:
            return None
        order = sorted(blocks)
        conv_mlp = state.get(f"{prefix}stages.0.blocks.0.mlp.fc1.weight", torch.empty(0)).dim() == 4
        return cls(tuple(blocks[s] for s in order), tuple(dims[s] for s in order), conv_mlp=conv_mlp)


class ConvNeXtTower(nn.Module):
    """[N, 3, S, S] -> [N, Σ dims, S/4, S/4] multi-stage ConvNeXt features (frozen by default)."""

    def __init__(self, spec: ConvNeXtSpec, drop_path: bool = True, trainable: bool = False) -> None:
        super().__init__()
        from timm.models.convnext import ConvNeXt

        trunk = ConvNeXt(
            depths=spec.depths, dims=spec.dims, num_classes=0, global_pool="",
            drop_path_rate=spec.drop_path_rate if drop_path else 0.0,
            ls_init_value=spec.ls_init_value, conv_mlp=spec.conv_mlp, use_grn=spec.use_grn,
        )
        self.spec = spec
        self.trainable = trainable
        self.vision_stem = trunk.stem
        self.vision_stages = trunk.stages
        self.requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_stem[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_stem[0].weight.device

    def stage_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[N, 3, S, S] -> the four stage outputs [N, C_s, S/4/2^s, S/4/2^s].

        Without gradients the trunk runs in channels_last (the blocks' LayerNorm and MLP then read
        the depthwise conv's output in place, no permuted copies) with `_block_eval`.
        """
        x = images.to(device=self.device, dtype=self.dtype)
        fast = not torch.is_grad_enabled() and fused_blocks_work(x.device.type, x.dtype)
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.vision_stem(x)
        outs = []
        for stage in self.vision_stages:
            if fast:
                x = stage.downsample(x)
                for block in stage.blocks:
                    x = _block_eval(block, x)
            else:
                x = stage(x)
            outs.append(x)
        return outs

    def features(self, images: torch.Tensor) -> MultiScaleMap:
        """The tower's output [N, Σ dims, S/4, S/4] kept factored (stage maps + resize matrices)."""
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return MultiScaleMap.upsampled(self.stage_maps(images))

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(images, list):
            return [self.forward(image.unsqueeze(0)) for image in images]
        # Later stages are upsampled in float32 like the original, then cast back (MultiScaleMap.dense).
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return self.features(images).dense().to(images.dtype)


def _exact_gelu(act: nn.Module) -> bool:
    """torch's exact GELU, or timm's own GELU module (timm >= 1.0 builds its blocks with it: F.gelu inside)."""
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    return type(act) is _timm_gelu()


@functools.cache
def _timm_gelu() -> type:
    """timm's GELU class, looked up once (the check runs for every block of every forward)."""
    from timm.layers.activations import GELU

    return GELU


def fast_block(block: nn.Module) -> bool:
    """Whether `_block_eval` computes this block itself (else the block's own forward runs)."""
    return (not block.use_conv_mlp and block.gamma is not None and isinstance(block.shortcut, nn.Identity)
            and isinstance(block.mlp.norm, nn.Identity) and _exact_gelu(block.mlp.act)
            and (not block.training or isinstance(block.drop_path, nn.Identity)))


def _block_eval(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A timm ConvNeXtBlock without autograd: x + γ ⊙ fc2(GELU(fc1(LN(dwconv(x))))) in channels_last,
    GELU fused into fc1 and γ and the residual into one addcmul. Other block variants (conv MLP,
    strided shortcut, active drop-path, no layer scale) run their own forward."""
    return _fused_block(block, x) if fast_block(block) else block(x)


@functools.cache
def fused_blocks_work(device_type: str, dtype: torch.dtype) -> bool:
    """Whether the fused block gives the stock block's output for `dtype` here (checked once per process
    on a small random block; a kernel this CPU lacks makes it False and the stock blocks run)."""
    from timm.models.convnext import ConvNeXtBlock

    gen = torch.Generator().manual_seed(0)  # its own generator: the global RNG stream is left alone
    block = ConvNeXtBlock(16, ls_init_value=0.5).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        block.to(device=device_type, dtype=dtype)
        x = torch.randn(2, 16, 9, 9, generator=gen).to(device=device_type, dtype=dtype)
        try:
            fused = _fused_block(block, x.contiguous(memory_format=torch.channels_last))
        except (RuntimeError, NotImplementedError):
            return False
        ref = block(x)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    return fast_block(block) and torch.allclose(fused.float(), ref.float(), rtol=tol, atol=tol)


def _fused_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = block.conv_dw(x).permute(0, 2, 3, 1)  # a view when x is channels_last: [N, H, W, C]
    y = F.layer_norm(y, block.norm.normalized_shape, block.norm.weight, block.norm.bias, block.norm.eps)
    y = linear(linear(y, block.mlp.fc1, gelu=True), block.mlp.fc2)
    return torch.addcmul(x.permute(0, 2, 3, 1), y, block.gamma).permute(0, 3, 1, 2)


def strip_open_clip_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip checkpoint -> {'vision_stem.*', 'vision_stages.*'} (handles state_dict/module. wrappers)."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith("visual.trunk.stem."):
            out["vision_stem." + key[len("visual.trunk.stem."):]] = value
        elif key.startswith("visual.trunk.stages."):
            out["vision_stages." + key[len("visual.trunk.stages."):]] = value
    return out
