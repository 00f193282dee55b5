"""One inference engine per loaded model, shared by the CLI, the model worker, the web demo and eval.

It turns (templated prompt, images, sampling parameters) into text: batched generation for many
requests at once (left padding, several images per request, text-only rows mixed in) and streaming
for one. `DynamicBatcher` (mgm.serve.batcher) builds request batching for servers on top of it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator

import torch
from PIL import Image

from mgm.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from mgm.data.image import images_to_batch
from mgm.errors import UserError
from mgm.mm_utils import KeywordsStoppingCriteria, tokenizer_image_token


@dataclass
class GenerationParams:
    """Sampling parameters of one request (temperature <= 0.001 means greedy, as the original worker)."""

    temperature: float = 0.2
    top_p: float | None = None
    max_new_tokens: int = 512
    num_beams: int = 1
    stop: list[str] = field(default_factory=list)

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0.001

    def key(self) -> tuple:
        """Requests with equal keys can share one `generate` call."""
        return (round(self.temperature, 6), self.top_p, self.num_beams, tuple(self.stop))

    def to_generate_kwargs(self) -> dict:
        kwargs: dict = dict(do_sample=self.do_sample, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens)
        if self.do_sample:
            kwargs["temperature"] = self.temperature
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:  # normalise to greedy without sampling parameters (MGM_SPEC Appendix B)
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class Request:
    """A fully templated prompt (with one `<image>` per image) and its images."""

    prompt: str
    images: list[Image.Image] = field(default_factory=list)
    params: GenerationParams = field(default_factory=GenerationParams)


class InferenceEngine:
    """Wraps `(tokenizer, model, image_processor)` from `load_pretrained_model`."""

    def __init__(self, tokenizer, model, image_processor, context_len: int = 2048,
                 extra_eos_tokens: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.image_processor = image_processor
        self.context_len = context_len
        self.lock = threading.Lock()  # one generate() at a time on a model
        eos = tokenizer.eos_token_id
        self.eos_ids: list[int] = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        for extra in ([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])):
            if extra not in self.eos_ids:
                self.eos_ids.append(extra)
        for token in extra_eos_tokens:
            self.add_eos_token(token)

    @property
    def device(self) -> torch.device:
        return self.model.get_model().embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        tower = self.model.get_vision_tower()
        return tower.dtype if tower is not None else self.model.dtype

    def add_eos_token(self, token: str) -> None:
        """Also stop on `token` when it is a single vocabulary entry (e.g. `<|eot_id|>` for llama_3)."""
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id and token_id not in self.eos_ids:
            self.eos_ids.append(token_id)

    # -- inputs ---------------------------------------------------------------------------------------
    def encode_prompt(self, request: Request) -> torch.Tensor:
        n_tags = request.prompt.count(DEFAULT_IMAGE_TOKEN)
        if n_tags != len(request.images):
            raise UserError(f"the prompt has {n_tags} <image> tags but {len(request.images)} images were given")
        if request.images and self.model.get_vision_tower() is None:
            raise UserError("this model has no vision tower; send text only")
        ids = tokenizer_image_token(request.prompt, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        return ids

    def image_tensors(self, images: list[Image.Image | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
        lr, hr = images_to_batch(images, self.image_processor, self.model.mgm_settings)
        lr = lr.to(device=self.device, dtype=self.dtype)
        return lr, (hr.to(device=self.device, dtype=self.dtype) if hr is not None else None)

    def num_image_tokens(self) -> int:
        tower = self.model.get_vision_tower()
        if tower is None:
            return 0
        s = self.model.mgm_settings
        return tower.num_patches * (s.image_grid**2 + (1 if s.image_global and s.image_grid > 1 else 0))

    def _batch_inputs(self, requests: list[Request]):
        rows = [self.encode_prompt(r) for r in requests]
        any_images = any(r.images for r in requests)
        pad_id = self.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else (self.eos_ids[0] if self.eos_ids else 0)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
        images = None
        images_aux = None
        if any_images:
            # One image block per <image>, in row order; text-only rows consume a dummy block (as the
            # original's training batches do), so rows and blocks stay aligned.
            flat: list[Image.Image | None] = []
            for r in requests:
                flat.extend(r.images if r.images else [None])
            images, images_aux = self.image_tensors(flat)
        for r, row in zip(requests, rows):
            total = len(row) + (self.num_image_tokens() - 1) * len(r.images)
            limit = getattr(self.model.config, "max_position_embeddings", None) or self.context_len
            if total + 1 > limit:
                raise UserError(f"the prompt is {total} tokens (image tokens included), over the model's "
                                f"context of {limit}; shorten it or start a new conversation")
        return ids.to(self.device), mask.to(self.device), images, images_aux

    def _stopping(self, params: GenerationParams, ids: torch.Tensor):
        if not params.stop:
            return None
        from transformers import StoppingCriteriaList

        return StoppingCriteriaList([KeywordsStoppingCriteria(params.stop, self.tokenizer, ids)])

    def _generate_kwargs(self, params: GenerationParams, ids: torch.Tensor) -> dict:
        kwargs = params.to_generate_kwargs()
        kwargs.update(eos_token_id=self.eos_ids or None, use_cache=True,
                      pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                      else (self.eos_ids[0] if self.eos_ids else None))
        stopping = self._stopping(params, ids)
        if stopping is not None:
            kwargs["stopping_criteria"] = stopping
        return kwargs

    def trim_stop(self, text: str, stop: list[str]) -> str:
        for s in stop:
            cut = text.find(s)
            if cut != -1:
                text = text[:cut]
        return text.strip()

    # -- generation -----------------------------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[str]:
        """Answers for requests sharing one set of sampling parameters, in one batched call."""
        if not requests:
            return []
        params = requests[0].params
        ids, mask, images, images_aux = self._batch_inputs(requests)
        kwargs = self._generate_kwargs(params, ids)
        with self.lock, torch.inference_mode():
            out = self.model.generate(ids, images=images, images_aux=images_aux, attention_mask=mask, **kwargs)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [self.trim_stop(t, params.stop) for t in texts]

    def generate_ids(self, requests: list[Request]) -> torch.Tensor:
        """New token ids (padded with pad/eos) for a batch, for callers that need tokens, not text."""
        params = requests[0].params
        ids, mask, images, images_aux = self._batch_inputs(requests)
        with self.lock, torch.inference_mode():
            return self.model.generate(ids, images=images, images_aux=images_aux, attention_mask=mask,
                                       **self._generate_kwargs(params, ids))

    def stream(self, request: Request, cancel: threading.Event | None = None) -> Iterator[str]:
        """Yield text pieces of one answer as they are generated; `cancel` stops generation early."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        ids, mask, images, images_aux = self._batch_inputs([request])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        kwargs = self._generate_kwargs(request.params, ids)
        criteria = list(kwargs.pop("stopping_criteria", []) or [])
        if cancel is not None:
            class _Cancelled(StoppingCriteria):
                def __call__(self, input_ids, scores, **kw):
                    return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

            criteria.append(_Cancelled())
        if criteria:
            kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        error: list[BaseException] = []

        def run() -> None:
            try:
                with self.lock, torch.inference_mode():
                    self.model.generate(ids, images=images, images_aux=images_aux, attention_mask=mask,
                                        streamer=streamer, **kwargs)
            except BaseException as exc:  # surfaced to the consumer below
                error.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            hit = [s for s in request.params.stop if s in text]
            if hit:
                before = text[: min(text.find(s) for s in hit)]
                yield before[len(text) - len(piece):] if len(before) > len(text) - len(piece) else ""
                if cancel is not None:
                    cancel.set()
                break
            yield piece
        thread.join()
        if error:
            raise error[0]
