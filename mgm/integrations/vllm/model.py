"""The vLLM model class for every MGM checkpoint: vLLM's own decoder + mgm's vision modules.

`MGMForConditionalGeneration` is registered under every MGM architecture name (MGMLlamaForCausalLM,
MGMGemmaForCausalLM, MGMMistralForCausalLM, MGMMixtralForCausalLM and the MiniGemini* ones). The
decoder is the vLLM class of the family's base architecture (LlamaForCausalLM, ... from mgm's
family table, chosen by `model_type`), so tensor/pipeline parallelism, quantisation and attention
backends are vLLM's. The vision side (`MGMVisionModules`) is mgm's towers, mining and projector,
replicated on every rank. vLLM asks `embed_multimodal` for the features of each image and scatters
them over the image's placeholder run; the decoder never sees the placeholder ids.

Weights: the checkpoint's keys are the original's (`model.layers.*`, `lm_head.*` go to the decoder;
`model.vision_tower.*`, `model.vision_tower_aux.*`, `model.mm_projector.*`, `model.vlm_uni_*` to the
vision side), and the towers take the copy `load_pretrained_model` would take.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from mgm.integrations.vllm.config import local_checkpoint_dir
from mgm.integrations.vllm.processor import MGMDummyInputsBuilder, MGMMultiModalProcessor, MGMProcessingInfo
from mgm.integrations.vllm.vision import MGMVisionModules
from mgm.model.families import family_of


@MULTIMODAL_REGISTRY.register_processor(MGMMultiModalProcessor, info=MGMProcessingInfo,
                                        dummy_inputs=MGMDummyInputsBuilder)
class MGMForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP):
    """An MGM checkpoint in vLLM: `vision` (mgm modules) + `language_model` (vLLM decoder)."""

    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return "<image>"
        raise ValueError(f"MGM takes images only, not {modality}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        model_config = vllm_config.model_config
        config = model_config.hf_config
        self.config = config
        self.checkpoint_dir = local_checkpoint_dir(model_config.model, model_config.revision)
        # mgm resolves relative tower paths (and reads embedded tower shapes) against the checkpoint
        config.name_or_path = self.checkpoint_dir
        family = family_of(config.model_type)
        with self._mark_tower_model(vllm_config, "image"):
            self.vision = MGMVisionModules(config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config, architectures=[family.causal_base.__name__],
                prefix=maybe_prefix(prefix, "language_model"))
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def get_language_model(self) -> nn.Module:
        return self.language_model

    # -- images ---------------------------------------------------------------------------------
    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """Per image [tokens_per_image, hidden]: mgm's `encode_images` on the processor's tensors."""
        images = kwargs.get("images")
        if images is None:
            return []
        images_aux = kwargs.get("images_aux")
        if isinstance(images, (list, tuple)):
            images = torch.stack(list(images))
        if isinstance(images_aux, (list, tuple)):
            images_aux = torch.stack(list(images_aux))
        features = self.vision.encode_images(images, images_aux)
        # vLLM's Gemma multiplies token embeddings by √hidden in `embed_input_ids`, which the image
        # rows bypass; the original scaled every input row (mgm does the same for its HF decoder).
        scale = getattr(self.language_model.model, "normalizer", None)
        if scale is not None:
            features = features * scale.to(features.dtype)
        return list(features.unbind(0))

    # -- decoder --------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs: object) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    # -- weights --------------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Original keys: decoder keys to vLLM's loader, multimodal keys to mgm's precedence rules."""
        prefixes = self.vision.multimodal_prefixes
        multimodal: dict[str, torch.Tensor] = {}

        def decoder_weights() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.startswith(prefixes):
                    multimodal[name[len("model."):]] = tensor
                else:
                    yield name, tensor

        loaded = {f"language_model.{name}" for name in self.language_model.load_weights(decoder_weights())}
        self.tower_weight_sources = self.vision.load_checkpoint_weights(self.checkpoint_dir, multimodal)
        loaded |= {f"vision.{name}" for name, _ in self.vision.named_parameters()}
        return loaded


def image_features(model: MGMForConditionalGeneration, fields: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The features vLLM scatters into the prompt for processor `fields`, on CPU (per image [T, H]).

    For `vllm.LLM.apply_model(functools.partial(image_features, fields=...))`: it runs in vLLM's
    worker process, which imports this module (functions are shipped by reference).
    """
    with torch.inference_mode():
        return [f.cpu() for f in model.embed_multimodal(**fields)]
