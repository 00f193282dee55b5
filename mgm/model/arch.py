"""The MGM behaviour, written once and mixed into every LLM family (docs/original.md#patch-info-mining, docs/design.md §3).

`MGMMetaModel` is mixed into the family's inner `*Model`: it composes the `MGMVisionEncoder` (towers,
projector, the three `vlm_uni_*` patch-info-mining modules), built from config in `__init__` and
mounted under the original names so standard `from_pretrained` fills every weight. `MGMMetaForCausalLM` is mixed into the family's `*ForCausalLM`:
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
from mgm.model.settings import MGMSettings
from mgm.model.splice import assign_images, splice
from mgm.model.vision.clip import CLIPVisionTower
from mgm.model.vision.convnext import ConvNeXtTower
from mgm.model.vision.multiscale import MultiScaleMap
from mgm.model.vision_encoder import MODULE_NAMES, MGMVisionEncoder

class MGMMetaModel:
    """Mixin for the inner model: composes the `MGMVisionEncoder` built from the config.

    The encoder's submodules are registered on the inner model under their original names, so the
    state-dict keys stay `model.vision_tower.*`, `model.mm_projector.*`, ...; the encoder itself is kept
    outside the module tree (`vision_encoder`) and runs those same modules.
    """

    def init_multimodal(self, config, vision_tower_path: str | None = None,
                        vision_tower_aux_path: str | None = None) -> None:
        """Build every multimodal module the config asks for (architecture only; weights come later)."""
        self.mgm_settings = MGMSettings.from_config(config)
        self._tower_overrides = {"vision_tower": vision_tower_path, "vision_tower_aux": vision_tower_aux_path}
        object.__setattr__(self, "_vision_encoder", None)
        if self.mgm_settings.vision_tower:
            self.build_vision_modules(config)

    def build_vision_modules(self, config) -> None:
        """(Re)build the vision encoder from `config`'s MGM keys and mount its modules on this model."""
        encoder = MGMVisionEncoder(config, self._tower_overrides["vision_tower"],
                                   self._tower_overrides["vision_tower_aux"])
        self.mgm_settings = encoder.settings
        for name in MODULE_NAMES:
            module = encoder._modules.get(name)
            if module is not None:
                setattr(self, name, module)
        object.__setattr__(self, "_vision_encoder", encoder)  # not a child: the keys stay the original ones

    @property
    def mgm_settings(self) -> MGMSettings:
        return self.__dict__["_mgm_settings"]

    @mgm_settings.setter
    def mgm_settings(self, value: MGMSettings) -> None:
        # one set of settings: the encoder follows the model's (e.g. a benchmark switching to HD views)
        object.__setattr__(self, "_mgm_settings", value)
        encoder = self.__dict__.get("_vision_encoder")
        if encoder is not None:
            encoder.settings = value

    @property
    def vision_encoder(self) -> MGMVisionEncoder | None:
        """The vision encoder over this model's own towers, projector and mining modules (None: text only)."""
        encoder = self.__dict__.get("_vision_encoder")
        if encoder is not None:
            for name in MODULE_NAMES:  # a module replaced on the model (wrapped, re-initialised) is the one used
                current = self._modules.get(name)
                if current is not None and encoder._modules.get(name) is not current:
                    encoder._modules[name] = current
        return encoder

    @property
    def tower_dirs(self) -> dict[str, Path | None]:
        encoder = self.__dict__.get("_vision_encoder")
        return dict(encoder.tower_dirs) if encoder is not None else {"vision_tower": None, "vision_tower_aux": None}

    # -- weights --------------------------------------------------------------------------------
    def load_tower_weights(self, checkpoint_dir: str | None) -> dict[str, str]:
        """Which copy of each tower's weights is used (`MGMVisionEncoder.load_tower_weights`)."""
        return self.vision_encoder.load_tower_weights(checkpoint_dir)

    def load_tower_weights_from_folders(self) -> None:
        """Fill both towers from their folders (training from a base LLM, docs/original.md#init-helpers)."""
        if self.vision_encoder is not None:
            self.vision_encoder.load_tower_weights_from_folders()


def missing_images_aux_message(settings: MGMSettings) -> str:
    """Why a checkpoint with an HR tower refuses `images` without `images_aux`, and how to build both."""
    return (f"this checkpoint has a high-res tower (mm_vision_tower_aux: {settings.vision_tower_aux}) but no "
            "images_aux were given, so its high-res branch would be skipped silently. Build both tensors from "
            "the same PIL images: `images, images_aux = mgm.data.image.images_to_batch(pil_images, "
            "image_processor, model.mgm_settings)` (the low-res view is derived from the high-res one, so "
            "images_aux cannot be rebuilt from `images`)")


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
        return images, self.get_model().vision_encoder.mine(images, images_aux)

    def hr_features(self, images_aux: torch.Tensor, like: torch.Tensor) -> MultiScaleMap:
        """The HR tower's map in `like`'s dtype/device (`MGMVisionEncoder.hr_features`)."""
        return self.get_model().vision_encoder.hr_features(images_aux, like)

    def encode_images(self, images: torch.Tensor, images_aux: torch.Tensor | None = None, is_video: bool = False) -> torch.Tensor:
        """Visual tokens in the LLM's embedding space: the vision encoder's, in the token embeddings' dtype.

        Base (g = 1): images [B, 3, s, s], images_aux [B, 3, S, S] -> [B, P², H]; HD (g > 1): images
        [B, g²(+1), 3, s, s], images_aux [B, 3, S, S] -> [B, (1 +) g²·P², H] (`MGMVisionEncoder.forward`).
        `images_aux=None` skips mining here, as the original did; `forward`/`generate` refuse that on a
        checkpoint with an HR tower (see `missing_images_aux_message`).
        """
        inner = self.get_model()
        return inner.vision_encoder(images, images_aux, dtype=inner.embed_tokens.weight.dtype)

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
