"""The MGM behaviour, written once and mixed into every LLM family (docs/original.md#patch-info-mining, docs/design.md §3).

`MGMMetaModel` is mixed into the family's inner `*Model`: it owns the towers, the projector and the
three `vlm_uni_*` patch-info-mining modules, all built from config in `__init__` so standard
`from_pretrained` fills every weight. `MGMMetaForCausalLM` is mixed into the family's `*ForCausalLM`:
image encoding, splicing image features into the token embeddings, `forward` and `generate`.
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path

import torch
from transformers import GenerationMixin

from mgm.constants import IGNORE_INDEX
from mgm.errors import UserError
from mgm.model.checkpoint_files import CheckpointFiles
from mgm.model.mining import build_mining_projectors, crops_to_grid, grid_to_crops, mine_patches
from mgm.model.projector import build_vision_projector
from mgm.model.settings import MGMSettings
from mgm.model.splice import assign_images, splice
from mgm.model.vision.clip import CLIPVisionTower
from mgm.model.vision.convnext import ConvNeXtSpec, ConvNeXtTower
from mgm.model.vision.multiscale import MultiScaleMap, resize_map
from mgm.model.vision.kinds import build_lr_tower, hr_folder_state, hr_spec_from
from mgm.model.vision.registry import missing_tower_error, resolve_tower_path

CLIP_PREFIX = "model.vision_tower.vision_tower."
AUX_PREFIX = "model.vision_tower_aux."
MINING_NAMES = ("vlm_uni_query_projector", "vlm_uni_aux_projector", "vlm_uni_val_projector")


class MGMMetaModel:
    """Mixin for the inner model: towers, projector and mining modules built from the config."""

    def init_multimodal(self, config, vision_tower_path: str | None = None,
                        vision_tower_aux_path: str | None = None) -> None:
        """Build every multimodal module the config asks for (architecture only; weights come later)."""
        self.mgm_settings = MGMSettings.from_config(config)
        self.tower_dirs: dict[str, Path | None] = {"vision_tower": None, "vision_tower_aux": None}
        self._tower_overrides = {"vision_tower": vision_tower_path, "vision_tower_aux": vision_tower_aux_path}
        if self.mgm_settings.vision_tower:
            self.build_vision_modules(config)

    def build_vision_modules(self, config) -> None:
        """(Re)build towers, projector and mining modules from `config`'s MGM keys."""
        s = self.mgm_settings = MGMSettings.from_config(config)
        checkpoint_dir = getattr(config, "name_or_path", None) or None
        ckpt = CheckpointFiles(checkpoint_dir) if checkpoint_dir and Path(checkpoint_dir).is_dir() else None

        lr_dir = resolve_tower_path(s.vision_tower, checkpoint_dir, self._tower_overrides["vision_tower"])
        tower = build_lr_tower(lr_dir, s.vision_tower, s)  # kind from the folder's config.json
        if tower is None:
            raise missing_tower_error("LR (CLIP)", "mm_vision_tower", s.vision_tower, checkpoint_dir,
                                      self._tower_overrides["vision_tower"])
        self.tower_dirs["vision_tower"] = lr_dir
        self.vision_tower = tower
        mm_hidden = s.mm_hidden_size or tower.hidden_size
        config.mm_hidden_size = mm_hidden
        self.mm_projector = build_vision_projector(s, mm_hidden, config.hidden_size)

        if s.has_aux:
            aux_dir = resolve_tower_path(s.vision_tower_aux, checkpoint_dir, self._tower_overrides["vision_tower_aux"])
            spec = hr_spec_from(aux_dir)  # timm or open_clip, from the folder's config files
            if spec is None and ckpt:
                spec = ConvNeXtSpec.from_state_dict(ckpt.shapes(AUX_PREFIX + "vision_"), AUX_PREFIX + "vision_")
            if spec is None:
                raise missing_tower_error("HR (ConvNeXt)", "mm_vision_tower_aux", s.vision_tower_aux,
                                          checkpoint_dir, self._tower_overrides["vision_tower_aux"])
            self.tower_dirs["vision_tower_aux"] = aux_dir
            self.vision_tower_aux = ConvNeXtTower(spec, drop_path=s.drop_path, trainable=s.optimize_vision_tower_aux)
            config.mm_hidden_size_aux = s.mm_hidden_size_aux or spec.hidden_size
            for name, module in build_mining_projectors(mm_hidden, config.mm_hidden_size_aux).items():
                setattr(self, name, module)

    # -- weights --------------------------------------------------------------------------------
    def load_tower_weights(self, checkpoint_dir: str | None) -> dict[str, str]:
        """Choose which copy of each tower's weights is used, exactly as the original (docs/original.md#tower-weights).

        CLIP: the checkpoint's copy when the shards holding mining/ConvNeXt keys carry the complete CLIP
        key set, else the tower folder. ConvNeXt: the checkpoint's copy only with
        `optimize_vision_tower_aux`, else the tower folder; the checkpoint's copy too when the folder is
        missing (a modern addition). Returns {tower: "checkpoint" | "folder"}.
        """
        s = self.mgm_settings
        ckpt = CheckpointFiles(checkpoint_dir) if checkpoint_dir and Path(checkpoint_dir).is_dir() else None
        keys = set(ckpt.keys()) if ckpt else set()
        selected = ckpt.keys_in(ckpt.files_with(("vlm_uni", "vision_fpn", "vision_stages"))) if ckpt else []
        sources: dict[str, str] = {}
        if getattr(self, "vision_tower", None) is not None:
            needed = {k for k in self.vision_tower.vision_tower.state_dict() if not k.endswith("position_ids")}
            in_selected = {k[len(CLIP_PREFIX):] for k in selected if k.startswith(CLIP_PREFIX)}
            anywhere = {k[len(CLIP_PREFIX):] for k in keys if k.startswith(CLIP_PREFIX)}
            lr_dir = self.tower_dirs["vision_tower"]
            if needed <= in_selected:
                sources["vision_tower"] = "checkpoint"
            elif lr_dir is not None and _has_hf_weights(lr_dir):
                _load_clip_folder(self.vision_tower, lr_dir)
                sources["vision_tower"] = "folder"
            elif needed <= anywhere:
                sources["vision_tower"] = "checkpoint"
            else:
                raise missing_tower_error("LR (CLIP)", "mm_vision_tower", s.vision_tower, checkpoint_dir,
                                          self._tower_overrides["vision_tower"])
        if getattr(self, "vision_tower_aux", None) is not None:
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
                                          checkpoint_dir, self._tower_overrides["vision_tower_aux"])
        return sources

    def load_tower_weights_from_folders(self) -> None:
        """Fill both towers from their folders (training from a base LLM, docs/original.md#init-helpers)."""
        if getattr(self, "vision_tower", None) is not None:
            _load_clip_folder(self.vision_tower, self.tower_dirs["vision_tower"])
        if getattr(self, "vision_tower_aux", None) is not None:
            state = hr_folder_state(self.tower_dirs["vision_tower_aux"])
            if state is None:
                raise UserError(f"no open_clip or timm weights in {self.tower_dirs['vision_tower_aux']}")
            self.vision_tower_aux.load_state_dict(state, strict=True)


def _has_hf_weights(folder: Path) -> bool:
    return any((folder / n).is_file() for n in (
        "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json"))


def _load_clip_folder(tower: CLIPVisionTower, folder: Path | None) -> None:
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


def missing_images_aux_message(settings: MGMSettings) -> str:
    """Why a checkpoint with an HR tower refuses `images` without `images_aux`, and how to build both."""
    return (f"this checkpoint has a high-res tower (mm_vision_tower_aux: {settings.vision_tower_aux}) but no "
            "images_aux were given, so its high-res branch would be skipped silently. Build both tensors from "
            "the same PIL images: `images, images_aux = mgm.data.image.images_to_batch(pil_images, "
            "image_processor, model.mgm_settings)` (the low-res view is derived from the high-res one, so "
            "images_aux cannot be rebuilt from `images`)")


def _check_windows(hr_size, grid: int, settings: MGMSettings) -> None:
    """Mining gives each LR token an equal window of the HR map: its side must be a multiple of the LR grid."""
    if any(side % grid for side in hr_size):
        side = grid * 4
        raise UserError(f"the HR map is {hr_size[0]}x{hr_size[1]} (image_size_aux {settings.image_size_aux} / 4) but the "
                        f"LR tower gives {grid} tokens a side: mining needs whole windows, so choose image_size_aux "
                        f"as a multiple of {side} (e.g. {side * max(1, round(settings.image_size_aux / side))})")


class MGMMetaForCausalLM:
    """Mixin for the causal LM: image encoding, splicing and generation over any HF decoder family."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """HF loading, then the original's choice of which tower weights are used (docs/original.md#tower-weights)."""
        result = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = result[0] if kwargs.get("output_loading_info") else result
        if model.get_vision_tower() is not None:
            model.tower_weight_sources = model.get_model().load_tower_weights(str(pretrained_model_name_or_path))
        return result

    def get_model(self):
        return self.model

    def get_vision_tower(self) -> CLIPVisionTower | None:
        return getattr(self.get_model(), "vision_tower", None)

    def get_vision_tower_aux(self) -> ConvNeXtTower | None:
        return getattr(self.get_model(), "vision_tower_aux", None)

    @property
    def mgm_settings(self) -> MGMSettings:
        return self.get_model().mgm_settings

    # -- image encoding (docs/original.md#encode-images) --------------------------------------------------------------
    def unified_resampler(self, images: torch.Tensor, images_aux: torch.Tensor | MultiScaleMap
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(LR tokens [N, P², D], HR map [N, C, H, W]) -> (LR tokens unchanged, mined [N, P², D])."""
        inner = self.get_model()
        mined = mine_patches(images, images_aux, inner.vlm_uni_query_projector,
                             inner.vlm_uni_aux_projector, inner.vlm_uni_val_projector)
        return images, mined

    def hr_features(self, images_aux: torch.Tensor, like: torch.Tensor) -> MultiScaleMap:
        """The HR tower's map [N, C, H, W] in `like`'s dtype/device, kept factored (mining then never
        materialises the upsampled stack, mgm.model.vision.multiscale)."""
        return self.get_vision_tower_aux().features(images_aux).to(dtype=like.dtype, device=like.device)

    def encode_images(self, images: torch.Tensor, images_aux: torch.Tensor | None = None, is_video: bool = False) -> torch.Tensor:
        """Visual tokens in the LLM's embedding space.

        Base (g = 1): images [B, 3, s, s], images_aux [B, 3, S, S] -> [B, P², H].
        HD (g > 1): images [B, g²(+1), 3, s, s] (global view last), images_aux [B, 3, S, S]
        -> [B, (1 +) g²·P², H] with the global tokens first.
        `images_aux=None` skips mining here, as the original did; `forward`/`generate` refuse that on a
        checkpoint with an HR tower (see `missing_images_aux_message`).
        Images may come in any floating dtype (the original scripts send fp16 whatever the model's
        dtype): each tower casts to its own dtype, and the features continue in the dtype of the token
        embeddings, which is the dtype the result comes back in.
        """
        s = self.mgm_settings
        g = s.image_grid
        inner = self.get_model()
        dtype = inner.embed_tokens.weight.dtype
        if g > 1:
            batch = images.shape[0]
            if s.image_global:
                views = torch.cat([images[:, :-1].flatten(0, 1), images[:, -1]], dim=0)
            else:
                views = images.flatten(0, 1)
            feats = self.get_vision_tower()(views).to(dtype)
            crop_feats = feats[: batch * g * g]
            glob_feats = feats[batch * g * g:]
            if images_aux is not None:
                hr = self.hr_features(images_aux, feats)
                _check_windows(hr.shape[-2:], g * self.get_vision_tower().num_patches_per_side, s)
                # The crops' windows tile the whole HR map: one mining call over a (g·P)² grid.
                mined = self.unified_resampler(crops_to_grid(crop_feats, g), hr)[1]
                crop_feats = crop_feats + grid_to_crops(mined, g)
                if s.image_global:
                    hs, ws = hr.shape[-2:]
                    glob_feats = glob_feats + self.unified_resampler(glob_feats, resize_map(hr, (hs // g, ws // g)))[1]
            tokens = crop_feats.reshape(batch, -1, crop_feats.shape[-1])
            if s.image_global:
                tokens = torch.cat([glob_feats, tokens], dim=1)
            return inner.mm_projector(tokens)
        feats = self.get_vision_tower()(images).to(dtype)
        if images_aux is not None and self.get_vision_tower_aux() is not None:
            hr = self.hr_features(images_aux, feats)
            _check_windows(hr.shape[-2:], self.get_vision_tower().num_patches_per_side, s)
            feats = feats + self.unified_resampler(feats, hr)[1]
        return inner.mm_projector(feats)

    # -- splicing (docs/original.md#splicing) ---------------------------------------------------------------------
    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values,
                                             labels, images, images_aux=None, padding_side: str | None = None):
        """Replace every IMAGE_TOKEN_INDEX by its visual tokens; returns the original 6-tuple.

        `images` holds one entry per `<image>` token (or per text-only row) in row order.
        `padding_side` overrides the config's `tokenizer_padding_side` (generation pads left).
        """
        if self.get_vision_tower() is None or images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        s = self.mgm_settings
        if isinstance(images, list):
            images = torch.stack(images)
        if isinstance(images_aux, list):
            images_aux = torch.stack(images_aux)
        if s.tune_mm_mlp_adapter and s.mm_use_im_start_end:
            raise NotImplementedError("mm_use_im_start_end with tune_mm_mlp_adapter is not supported")
        if images_aux is None and self.get_vision_tower_aux() is not None:
            raise UserError(missing_images_aux_message(s))
        orig_labels, orig_position_ids, orig_mask = labels, position_ids, attention_mask
        attention_mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                          else attention_mask.bool())
        if labels is None:
            labels = torch.full_like(input_ids, IGNORE_INDEX)
        slots = assign_images(input_ids, attention_mask, images.shape[0])
        if images_aux is not None and images_aux.shape[0] != images.shape[0]:
            raise UserError(f"{images.shape[0]} images but {images_aux.shape[0]} images_aux were given; "
                            "each image needs its high-res tensor")
        features = self.encode_images(images, images_aux)
        embed = self.get_model().embed_tokens
        # Families whose embedding scales token rows (Gemma: x√H) scale image rows the same way,
        # as the original did by scaling every input embedding inside the model.
        scale = getattr(embed, "scalar_embed_scale", None)
        if scale is not None and scale != 1.0:
            features = features * torch.tensor(scale, dtype=features.dtype)
        text_embeds = embed(input_ids.clamp(min=0))  # <image> rows are replaced, never read
        embeds_padded, labels_padded, mask, positions = splice(
            text_embeds, features, slots, attention_mask, labels, s.model_max_length, padding_side or s.padding_side)

        return (
            None,
            None if orig_position_ids is None else positions,
            None if orig_mask is None else mask.to(orig_mask.dtype),
            past_key_values,
            embeds_padded,
            None if orig_labels is None else labels_padded,
        )

    # -- forward / generate (docs/original.md#forward-and-generate) -----------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, images=None, images_aux=None, **kwargs):
        """The original's signature (`past_key_values` kept for its callers; `cache` accepted too)."""
        cache = _take_cache(past_key_values, kwargs.pop("cache", None))
        if inputs_embeds is None:
            (input_ids, position_ids, attention_mask, cache, inputs_embeds, labels) = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, cache, labels, images, images_aux))
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               **{cache_keyword(): cache}, **kwargs)

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, images=None, images_aux=None, **kwargs):
        """Generate from token ids with images spliced in; returns ONLY the new tokens (as the original).

        Batches may mix rows with images and text-only rows; rows are re-padded on the left.
        """
        if inputs is None:  # HF callers (the image-text-to-text pipeline) name them input_ids
            inputs = kwargs.pop("input_ids", None)
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("`inputs_embeds` is not supported; pass token ids and images")
        if images is not None:
            (_, position_ids, attention_mask, _, inputs_embeds, _) = self.prepare_inputs_labels_for_multimodal(
                inputs, position_ids, attention_mask, None, None, images, images_aux, padding_side="left")
            if attention_mask is None:
                attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        limit = getattr(self.config, "max_position_embeddings", None)
        if limit and inputs_embeds.shape[1] >= limit:
            raise UserError(
                f"the prompt is {inputs_embeds.shape[1]} tokens (image tokens included) but the model's context "
                f"is {limit} (max_position_embeddings); shorten the conversation or use fewer images")
        return super().generate(position_ids=position_ids, attention_mask=attention_mask,
                                inputs_embeds=inputs_embeds, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, inputs_embeds=None,
                                      images=None, images_aux=None, *, cache=None, **kwargs):
        # `cache` named here: generate() checks its model kwargs against this signature and forward's
        cache = _take_cache(past_key_values, cache)
        inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds,
                                                       **{cache_keyword(): cache}, **kwargs)
        if images is not None:
            inputs["images"] = images
        if images_aux is not None:
            inputs["images_aux"] = images_aux
        return inputs


@functools.cache
def cache_keyword() -> str:
    """The keyword transformers' decoders take the KV cache under: `cache` from 5.25 on (where
    `past_key_values` warns and goes in 5.40), `past_key_values` before. Read from the signature."""
    return "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters \
        else "past_key_values"


def output_cache(output):
    """The KV cache of a model output, without the deprecation warning of `output.past_key_values`."""
    return getattr(output, cache_keyword())


def _take_cache(past_key_values, cache):
    """One cache from the original's `past_key_values` or transformers' `cache`."""
    if cache is not None and past_key_values is not None:
        raise TypeError("pass the KV cache as `cache` or as `past_key_values`, not both")
    return past_key_values if cache is None else cache
