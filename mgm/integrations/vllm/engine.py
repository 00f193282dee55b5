"""An asynchronous vLLM engine with the surface mgm's worker uses from `InferenceEngine`.

`VLLMEngine` loads an MGM checkpoint in vLLM's `AsyncLLM` (continuous batching, paged KV cache,
tensor/pipeline parallelism from `engine_args`) and keeps mgm's tokenizer beside it, so prompts are
tokenised exactly as mgm's engine does (`tokenizer_image_token`) and sent as token ids with one
placeholder per image. `stream(request)` yields vLLM's outputs as they come (new token ids + text).
"""
from __future__ import annotations

import types
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


from mgm.constants import IMAGE_TOKEN_INDEX
from mgm.inference.engine import InferenceEngine
from mgm.inference.requests import GenerationParams, Request


@dataclass
class StreamPiece:
    """One increment of an answer: new token ids, vLLM's text for them, prompt length, finish reason."""

    token_ids: list[int]
    text: str
    prompt_tokens: int
    finish_reason: str | None  # None while more follows


class _ModelView:
    """What the worker reads from `engine.model`: `config.max_position_embeddings` (`context_limit`), here
    vLLM's `max_model_len` (it may be set below the model's), and whether there is a vision tower (the
    towers themselves live in vLLM's worker processes)."""

    def __init__(self, max_model_len: int, has_vision: bool) -> None:
        self.config = types.SimpleNamespace(max_position_embeddings=max_model_len)
        self.has_vision = has_vision

    def get_vision_tower(self) -> _ModelView | None:
        return self if self.has_vision else None


class VLLMEngine:
    """vLLM's AsyncLLM over one MGM checkpoint, with mgm's tokenisation and stop tokens."""

    caches = None  # mgm's feature / prefix caches are the in-process engine's; vLLM caches prefixes itself

    def __init__(self, model_path: str, template: str | None = None, **engine_args: Any) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from mgm.integrations.vllm.config import image_placeholder_id, local_checkpoint_dir
        from mgm.profile import profile_for_checkpoint
        from mgm.model.settings import MGMSettings

        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model_path, **engine_args))
        config = self.llm.model_config.hf_config
        self.context_len = int(self.llm.model_config.max_model_len)
        # the tokenizer as `load_pretrained_model` sets it up (the original's sentencepiece decoding,
        # <im_patch> & co.), so answers decode to mgm's text
        from mgm.data.tokenizer_setup import add_image_tokens
        from mgm.model.families import family_of
        from mgm.model.sentencepiece_decode import load_tokenizer

        folder = local_checkpoint_dir(model_path)
        self.tokenizer = load_tokenizer(folder, family_of(config.model_type).key)
        settings = MGMSettings.from_config(config)
        self.has_vision = bool(settings.vision_tower)
        if self.has_vision:
            add_image_tokens(self.tokenizer, config)
        self.model = _ModelView(self.context_len, self.has_vision)
        # the same profile `load_pretrained_model` resolves, with vLLM's maximum length as the context
        self.profile = profile_for_checkpoint(folder, config, self.tokenizer, template=template,
                                              context_limit=self.context_len)
        self.placeholder_id = image_placeholder_id(config, self.tokenizer)
        self.eos_ids: list[int] = list(self.profile.eos_ids)

    # -- the InferenceEngine surface the worker and its budget helpers use --------------------------
    # mgm's own code, over this engine's tokenizer / eos ids / `model.get_vision_tower()`
    add_eos_token = InferenceEngine.add_eos_token
    encode_prompt = InferenceEngine.encode_prompt

    def num_image_tokens(self) -> int:
        return self.profile.tokens_per_image

    def sampling_params(self, params: GenerationParams):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            temperature=params.temperature if params.do_sample else 0.0,
            top_p=(params.top_p if params.top_p is not None else 1.0) if params.do_sample else 1.0,
            max_tokens=params.max_new_tokens, stop=list(params.stop) or None, stop_token_ids=list(self.eos_ids),
            skip_special_tokens=True, output_kind=RequestOutputKind.DELTA)

    def prompt_for(self, request: Request) -> dict[str, Any]:
        """vLLM prompt: mgm's ids with the placeholder id per image, and the images."""
        ids = [self.placeholder_id if t == IMAGE_TOKEN_INDEX else t for t in self.encode_prompt(request).tolist()]
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        if request.images:
            prompt["multi_modal_data"] = {"image": list(request.images)}
        return prompt

    async def stream(self, request: Request, request_id: str | None = None) -> AsyncIterator[StreamPiece]:
        """The answer to `request` as increments; leaving the loop early aborts the request in vLLM."""
        request_id = request_id or uuid.uuid4().hex
        finished = False
        try:
            async for out in self.llm.generate(self.prompt_for(request), self.sampling_params(request.params),
                                               request_id):
                choice = out.outputs[0]
                finished = out.finished
                reason = None
                if finished:
                    reason = "length" if choice.finish_reason == "length" else "stop"
                yield StreamPiece(list(choice.token_ids), choice.text, len(out.prompt_token_ids or ()), reason)
        finally:
            if not finished:
                await self.llm.abort(request_id)

    def shutdown(self) -> None:
        self.llm.shutdown()
