"""vLLM's multimodal processor for MGM: mgm's prompt tokenisation and image preprocessing.

For each image the processor returns mgm's tensors (`images_to_batch`): `images` [3, s, s] (HD:
[g²(+1), 3, s, s], global view last) and, with an HR tower, `images_aux` [3, S, S]; and it expands
each image placeholder in the prompt to one placeholder per visual token (P² per LR view).

Prompts: mgm tokenises each `<image>`-separated chunk on its own (`tokenizer_image_token`), which
tokenising the whole text (vLLM's renderer) does not reproduce around the tags. So a text prompt is
decoded back and re-tokenised the mgm way; a prompt given as token ids that already holds one
placeholder id (`mgm.integrations.vllm.config.image_placeholder_id`) per image is used as is (the
mgm vLLM worker sends those).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import cached_property

from PIL import Image
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
)

from mgm.constants import DEFAULT_IMAGE_TOKEN
from mgm.errors import UserError
from mgm.integrations.vllm.config import image_placeholder_id, local_checkpoint_dir
from mgm.integrations.vllm.vision import clip_tower_config
from mgm.profile import tokens_per_image
from mgm.model.settings import MGMSettings

IMAGE_FIELDS = ("images", "images_aux")


class MGMProcessingInfo(BaseProcessingInfo):
    """What the processor needs from the checkpoint: MGM settings, CLIP geometry, image processor."""

    @cached_property
    def mgm_settings(self) -> MGMSettings:
        return MGMSettings.from_config(self.get_hf_config())

    @cached_property
    def checkpoint_dir(self) -> str:
        return local_checkpoint_dir(self.ctx.model_config.model, self.ctx.model_config.revision)

    @cached_property
    def _clip(self):
        return clip_tower_config(self.mgm_settings, self.checkpoint_dir)

    @cached_property
    def image_processor(self):
        from mgm.model.builder import image_processor_for_tower

        folder, clip = self._clip
        return image_processor_for_tower(folder, clip.image_size)

    @cached_property
    def placeholder_id(self) -> int:
        return image_placeholder_id(self.get_hf_config(), self.get_tokenizer())

    def get_hf_processor(self, **kwargs: object):
        return self.image_processor

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"text_kwargs": set(), "images_kwargs": set()}

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def tokens_per_image(self) -> int:
        return tokens_per_image(self.get_hf_config(), self._clip[1])

    def image_side(self) -> int:
        """Side of the square the preprocessing resizes to (HR when there is an HR tower)."""
        _, clip = self._clip
        s = self.mgm_settings
        return s.image_size_aux if s.has_aux else clip.image_size * s.image_grid

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.tokens_per_image()}

    def mgm_prompt_ids(self, prompt: list[int], num_images: int) -> list[int]:
        """`prompt` as mgm's `tokenizer_image_token` makes it, one placeholder id per image."""
        from mgm.data.prompt_ids import tokenizer_image_token

        placeholder = self.placeholder_id
        if prompt.count(placeholder) == num_images:
            return prompt
        tokenizer = self.get_tokenizer()
        body = prompt[1:] if prompt and prompt[0] == tokenizer.bos_token_id else prompt
        text = tokenizer.decode(body)
        tags = text.count(DEFAULT_IMAGE_TOKEN)
        if tags != num_images:
            raise UserError(f"the prompt has {tags} {DEFAULT_IMAGE_TOKEN} tags but {num_images} images were given")
        return tokenizer_image_token(text, tokenizer, placeholder)


class MGMDummyInputsBuilder(BaseDummyInputsBuilder[MGMProcessingInfo]):
    """Profiling inputs: `<image>` tags and white square images of the preprocessing size."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return DEFAULT_IMAGE_TOKEN * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        side = self.info.image_side()
        overrides = mm_options.get("image") if mm_options else None
        return {"image": self._get_dummy_images(width=side, height=side, num_images=mm_counts.get("image", 0),
                                                overrides=overrides)}


class MGMMultiModalProcessor(BaseMultiModalProcessor[MGMProcessingInfo]):
    """mgm tokenisation + `images_to_batch`; each placeholder becomes `tokens_per_image()` of them."""

    def apply(self, inputs, timing_ctx):
        count = inputs.mm_data_items.get_all_counts().get("image", 0)
        inputs = dataclasses.replace(inputs, prompt=self.info.mgm_prompt_ids(list(inputs.prompt), count))
        return super().apply(inputs, timing_ctx)

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        from mgm.data.image import images_to_batch

        images = list(hf_data.get("images") or [])
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise UserError(f"image {i} is a {type(image).__name__}; MGM takes PIL images")
        lr, hr = images_to_batch(images, self.info.image_processor, self.info.mgm_settings)
        data = {"images": lr}
        if hr is not None:
            data["images_aux"] = hr
        return BatchFeature(data)

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
                              ) -> Mapping[str, MultiModalFieldConfig]:
        return {name: MultiModalFieldConfig.batched("image") for name in IMAGE_FIELDS if name in hf_inputs}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptReplacement]:
        placeholder = self.info.placeholder_id
        run = [placeholder] * self.info.tokens_per_image()
        return [PromptReplacement(modality="image", target=[placeholder], replacement=run)]
