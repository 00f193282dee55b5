"""`MGMVisionEncoder`: images -> visual tokens in the LLM's embedding space (docs/original.md#encode-images).

One module holds the LR CLIP tower, the optional HR ConvNeXt tower, the three `vlm_uni_*` patch-info
mining projectors and the vision-language projector, built from an MGM config. `forward(images,
images_aux)` returns the features the LLM splices in; `tokens_per_image` says how many one image gives.

The causal LM composes it (`MGMMetaModel.vision_encoder`): the inner model keeps the encoder's
submodules under their original names (`vision_tower`, `mm_projector`, `vlm_uni_query_projector`, ...),
so released checkpoints load and save with unchanged state-dict keys, and the encoder, held outside
the module tree, runs those very modules. vLLM's integration builds one on its own.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mgm.errors import UserError
from mgm.model.checkpoint_files import CheckpointFiles
from mgm.model.mining import build_mining_projectors, crops_to_grid, grid_to_crops, mine_patches
from mgm.model.projector import build_vision_projector
from mgm.model.settings import MGMSettings
from mgm.model.vision.clip import CLIPVisionTower
from mgm.model.vision.convnext import ConvNeXtSpec, ConvNeXtTower
from mgm.model.vision.multiscale import MultiScaleMap, resize_map
from mgm.model.vision.kinds import build_lr_tower, hr_folder_state, hr_spec_from
from mgm.model.vision.registry import missing_tower_error, resolve_tower_path

CLIP_PREFIX = "model.vision_tower.vision_tower."
AUX_PREFIX = "model.vision_tower_aux."
MINING_NAMES = ("vlm_uni_query_projector", "vlm_uni_aux_projector", "vlm_uni_val_projector")
# Submodule names, as the original's inner model named them (the checkpoint keys are `model.<name>.*`).
MODULE_NAMES = ("vision_tower", "mm_projector", "vision_tower_aux", *MINING_NAMES)


def tokens_per_view(tower_config, settings: MGMSettings) -> int:
    """Visual tokens of one LR view: P² patches (+1 with `cls_patch`). SigLIP 2 (NaFlex) configs give
    `num_patches` instead of an image size."""
    image_size = getattr(tower_config, "image_size", None)
    patches = (image_size // tower_config.patch_size) ** 2 if image_size else int(tower_config.num_patches)
    return patches + (1 if settings.select_feature == "cls_patch" else 0)


class MGMVisionEncoder(nn.Module):
    """LR tower + optional HR tower + patch info mining + projector, built from an MGM config.

    config: an MGM model config (its `mm_*` keys; `mm_hidden_size` / `mm_hidden_size_aux` are filled in
    from the towers when unset, as the original did); `name_or_path` is the checkpoint folder relative
    tower paths resolve against. vision_tower_path / vision_tower_aux_path: tower folder overrides.
    """

    def __init__(self, config, vision_tower_path: str | None = None, vision_tower_aux_path: str | None = None
                 ) -> None:
        super().__init__()
        s = self.settings = MGMSettings.from_config(config)
        if not s.vision_tower:
            raise UserError("this MGM config names no vision tower (mm_vision_tower); it takes no images")
        self.overrides = {"vision_tower": vision_tower_path, "vision_tower_aux": vision_tower_aux_path}
        checkpoint_dir = getattr(config, "name_or_path", None) or None
        self.checkpoint_dir = checkpoint_dir
        ckpt = CheckpointFiles(checkpoint_dir) if checkpoint_dir and Path(checkpoint_dir).is_dir() else None

        lr_dir = resolve_tower_path(s.vision_tower, checkpoint_dir, vision_tower_path)
        tower = build_lr_tower(lr_dir, s.vision_tower, s)  # CLIP or SigLIP: the kind from the folder's config.json
        if tower is None:
            raise missing_tower_error("LR (CLIP)", "mm_vision_tower", s.vision_tower, checkpoint_dir, vision_tower_path)
        self.tower_dirs: dict[str, Path | None] = {"vision_tower": lr_dir, "vision_tower_aux": None}
        self.vision_tower = tower
        mm_hidden = s.mm_hidden_size or tower.hidden_size
        config.mm_hidden_size = mm_hidden
        self.mm_projector = build_vision_projector(s, mm_hidden, config.hidden_size)
        self.vision_tower_aux = None
        if s.has_aux:
            aux_dir = resolve_tower_path(s.vision_tower_aux, checkpoint_dir, vision_tower_aux_path)
            spec = hr_spec_from(aux_dir)  # timm or open_clip, from the folder's config files
            if spec is None and ckpt:
                spec = ConvNeXtSpec.from_state_dict(ckpt.shapes(AUX_PREFIX + "vision_"), AUX_PREFIX + "vision_")
            if spec is None:
                raise missing_tower_error("HR (ConvNeXt)", "mm_vision_tower_aux", s.vision_tower_aux,
                                          checkpoint_dir, vision_tower_aux_path)
            self.tower_dirs["vision_tower_aux"] = aux_dir
            self.vision_tower_aux = ConvNeXtTower(spec, drop_path=s.drop_path, trainable=s.optimize_vision_tower_aux)
            config.mm_hidden_size_aux = s.mm_hidden_size_aux or spec.hidden_size
            for name, module in build_mining_projectors(mm_hidden, config.mm_hidden_size_aux).items():
                setattr(self, name, module)

    @property
    def tokens_per_image(self) -> int:
        """Visual tokens one image occupies in the LLM's sequence (every LR view, global view included)."""
        return tokens_per_view(self.vision_tower.config, self.settings) * self.settings.num_views

    # -- encoding -----------------------------------------------------------------------------------------
    def mine(self, lr: torch.Tensor, hr: torch.Tensor | MultiScaleMap) -> torch.Tensor:
        """(LR tokens [N, P², D], HR map [N, C, H, W]) -> mined tokens [N, P², D]."""
        return mine_patches(lr, hr, self.vlm_uni_query_projector, self.vlm_uni_aux_projector,
                            self.vlm_uni_val_projector)

    def hr_features(self, images_aux: torch.Tensor, like: torch.Tensor) -> MultiScaleMap:
        """The HR tower's map [N, C, H, W] in `like`'s dtype/device, kept factored (mining then never
        materialises the upsampled stack, mgm.model.vision.multiscale)."""
        return self.vision_tower_aux.features(images_aux).to(dtype=like.dtype, device=like.device)

    def forward(self, images: torch.Tensor, images_aux: torch.Tensor | None = None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        """Visual tokens in the LLM's embedding space.

        Base (g = 1): images [B, 3, s, s], images_aux [B, 3, S, S] -> [B, P², H].
        HD (g > 1): images [B, g²(+1), 3, s, s] (global view last), images_aux [B, 3, S, S]
        -> [B, (1 +) g²·P², H] with the global tokens first.
        `images_aux=None` skips mining. Images may come in any floating dtype: each tower casts to its
        own, and the features continue in `dtype` (default: the projector's), the dtype of the result.
        """
        s = self.settings
        g = s.image_grid
        if dtype is None:
            weight = next(self.mm_projector.parameters(), None)
            dtype = weight.dtype if weight is not None else torch.get_default_dtype()
        if g > 1:
            batch = images.shape[0]
            if s.image_global:
                views = torch.cat([images[:, :-1].flatten(0, 1), images[:, -1]], dim=0)
            else:
                views = images.flatten(0, 1)
            feats = self.vision_tower(views).to(dtype)
            crop_feats = feats[: batch * g * g]
            glob_feats = feats[batch * g * g:]
            if images_aux is not None:
                hr = self.hr_features(images_aux, feats)
                _check_windows(hr.shape[-2:], g * self.vision_tower.num_patches_per_side, s)
                # The crops' windows tile the whole HR map: one mining call over a (g·P)² grid.
                crop_feats = crop_feats + grid_to_crops(self.mine(crops_to_grid(crop_feats, g), hr), g)
                if s.image_global:
                    hs, ws = hr.shape[-2:]
                    glob_feats = glob_feats + self.mine(glob_feats, resize_map(hr, (hs // g, ws // g)))
            tokens = crop_feats.reshape(batch, -1, crop_feats.shape[-1])
            if s.image_global:
                tokens = torch.cat([glob_feats, tokens], dim=1)
            return self.mm_projector(tokens)
        feats = self.vision_tower(images).to(dtype)
        if images_aux is not None and self.vision_tower_aux is not None:
            hr = self.hr_features(images_aux, feats)
            _check_windows(hr.shape[-2:], self.vision_tower.num_patches_per_side, s)
            feats = feats + self.mine(feats, hr)
        return self.mm_projector(feats)

    # -- weights ------------------------------------------------------------------------------------------
    def load_tower_weights(self, checkpoint_dir: str | None) -> dict[str, str]:
        """Choose which copy of each tower's weights is used, exactly as the original (docs/original.md#tower-weights).

        CLIP: the checkpoint's copy when the shards holding mining/ConvNeXt keys carry the complete CLIP
        key set, else the tower folder. ConvNeXt: the checkpoint's copy only with
        `optimize_vision_tower_aux`, else the tower folder; the checkpoint's copy too when the folder is
        missing (a modern addition). Returns {tower: "checkpoint" | "folder"}.
        """
        s = self.settings
        ckpt = CheckpointFiles(checkpoint_dir) if checkpoint_dir and Path(checkpoint_dir).is_dir() else None
        keys = set(ckpt.keys()) if ckpt else set()
        selected = ckpt.keys_in(ckpt.files_with(("vlm_uni", "vision_fpn", "vision_stages"))) if ckpt else []
        sources: dict[str, str] = {}
        needed = {k for k in self.vision_tower.vision_tower.state_dict() if not k.endswith("position_ids")}
        in_selected = {k[len(CLIP_PREFIX):] for k in selected if k.startswith(CLIP_PREFIX)}
        anywhere = {k[len(CLIP_PREFIX):] for k in keys if k.startswith(CLIP_PREFIX)}
        lr_dir = self.tower_dirs["vision_tower"]
        if needed <= in_selected:
            sources["vision_tower"] = "checkpoint"
        elif lr_dir is not None and _has_hf_weights(lr_dir):
            load_clip_folder(self.vision_tower, lr_dir)
            sources["vision_tower"] = "folder"
        elif needed <= anywhere:
            sources["vision_tower"] = "checkpoint"
        else:
            raise missing_tower_error("LR (CLIP)", "mm_vision_tower", s.vision_tower, checkpoint_dir,
                                      self.overrides["vision_tower"])
        if self.vision_tower_aux is not None:
            needed = set(self.vision_tower_aux.state_dict())
            anywhere = {k[len(AUX_PREFIX):] for k in keys if k.startswith(AUX_PREFIX)}
            aux_dir = self.tower_dirs["vision_tower_aux"]
            folder_state = None
            if not (s.optimize_vision_tower_aux and needed <= anywhere) and aux_dir is not None:
                folder_state = hr_folder_state(aux_dir)
            if folder_state:
                self.vision_tower_aux.load_state_dict(folder_state, strict=True)
                sources["vision_tower_aux"] = "folder"
            elif needed <= anywhere:
                sources["vision_tower_aux"] = "checkpoint"
            else:
                raise missing_tower_error("HR (ConvNeXt)", "mm_vision_tower_aux", s.vision_tower_aux,
                                          checkpoint_dir, self.overrides["vision_tower_aux"])
        return sources

    def load_tower_weights_from_folders(self) -> None:
        """Fill both towers from their folders (training from a base LLM, docs/original.md#init-helpers)."""
        load_clip_folder(self.vision_tower, self.tower_dirs["vision_tower"])
        if self.vision_tower_aux is not None:
            state = hr_folder_state(self.tower_dirs["vision_tower_aux"])
            if state is None:
                raise UserError(f"no open_clip or timm weights in {self.tower_dirs['vision_tower_aux']}")
            self.vision_tower_aux.load_state_dict(state, strict=True)


def _check_windows(hr_size, grid: int, settings: MGMSettings) -> None:
    """Mining gives each LR token an equal window of the HR map: its side must be a multiple of the LR grid."""
    if any(side % grid for side in hr_size):
        side = grid * 4
        raise UserError(f"the HR map is {hr_size[0]}x{hr_size[1]} (image_size_aux {settings.image_size_aux} / 4) but the "
                        f"LR tower gives {grid} tokens a side: mining needs whole windows, so choose image_size_aux "
                        f"as a multiple of {side} (e.g. {side * max(1, round(settings.image_size_aux / side))})")


def _has_hf_weights(folder: Path) -> bool:
    return any((folder / n).is_file() for n in (
        "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json"))


def load_clip_folder(tower: CLIPVisionTower, folder: Path | None) -> None:
    """Copy the vision weights of a CLIP or CLIPVision folder into `tower` (strict)."""
    if folder is None or not _has_hf_weights(folder):
        raise UserError(f"CLIP tower folder {folder} has no weights file")
    files = CheckpointFiles(folder)
    # Released folders are full CLIP models (`vision_model.*` + text keys); transformers 5 saves a
    # CLIPVisionModel without the `vision_model.` level. Accept both.
    parts = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")
    wanted = {}
    for key in files.keys():
        bare = key[len("vision_model."):] if key.startswith("vision_model.") else key
        if bare.startswith(parts) and not bare.endswith("position_ids"):
            wanted[key] = "vision_model." + bare
    state = {wanted[k]: v for k, v in files.load(list(wanted)).items()}
    missing, unexpected = tower.vision_tower.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise UserError(f"CLIP tower folder {folder}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
