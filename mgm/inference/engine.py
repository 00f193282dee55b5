"""One inference engine per loaded model, shared by the CLI, the model worker, the web demo and eval.

It turns (templated prompt, images, sampling parameters) into text: `generate` answers many requests
in one batched call (left padding, several images per request, text-only rows mixed in, beam search
allowed), `stream` yields one answer piece by piece. The engine owns its end-of-sequence set (the
tokenizer's, the generation config's and the template's stop tokens), the prompt encoding and the
one context-length check. Streamed rows live in `mgm.inference.rows`, continuous batching in
`mgm.inference.continuous`, request batching for servers in `mgm.inference.batcher`.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from PIL import Image

from mgm.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from mgm.data.image import images_to_batch
from mgm.errors import UserError
from mgm.inference.context import check_context, context_limit, request_token_count  # noqa: F401 (re-exported)
from mgm.inference.decoding import trim_stop
from mgm.inference.requests import Request
from mgm.data.prompt_ids import tokenizer_image_token
from mgm.inference.stopping import KeywordsStoppingCriteria
from mgm.model.arch import cache_keyword
from mgm.model.kv_cache import growing_cache
from mgm.profile import ModelProfile, profile_for_model, single_token_id


@dataclass
class BatchInputs:
    """Model inputs of a batch: ids / mask [B, L] (left padded), image blocks [N, 3, H, W] (or None)."""

    ids: torch.Tensor
    mask: torch.Tensor
    images: torch.Tensor | None
    images_aux: torch.Tensor | None

    def generate_kwargs(self) -> dict:
        return dict(images=self.images, images_aux=self.images_aux, attention_mask=self.mask)


class InferenceEngine:
    """Wraps `(tokenizer, model, image_processor, context_len)` from `load_pretrained_model`.

    profile: the model's `ModelProfile` (default: the one `load_pretrained_model` resolved, else one
    resolved here for a model built by hand); its end-of-sequence ids, pad id, context limit, tokens
    per image and decoder are the engine's. extra_eos_tokens: tokens that also end an answer when they
    are single vocabulary entries.
    """

    def __init__(self, tokenizer, model, image_processor, context_len: int = 2048,
                 extra_eos_tokens: Iterable[str] = (), profile: ModelProfile | None = None) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.image_processor = image_processor
        self.context_len = context_len
        self.lock = threading.Lock()  # one forward pass at a time on a model
        self.caches = None  # EngineCaches once `use_caches` is called (mgm.inference.cached_prefill)
        if profile is None:
            profile = getattr(model, "mgm_profile", None) or profile_for_model(model, tokenizer, image_processor)
        self.profile = profile
        self.eos_ids: list[int] = list(profile.eos_ids)
        for token in extra_eos_tokens:
            self.add_eos_token(token)

    @property
    def device(self) -> torch.device:
        return self.model.get_model().embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        tower = self.model.get_vision_tower()
        return tower.dtype if tower is not None else self.model.dtype

    @property
    def pad_id(self) -> int:
        return self.profile.pad_id

    def add_eos_token(self, token: str) -> None:
        """Also stop on `token` when it is a single vocabulary entry."""
        token_id = single_token_id(self.tokenizer, token)
        if token_id is not None and token_id not in self.eos_ids:
            self.eos_ids.append(token_id)

    def use_caches(self, image_bytes: int, prefix_bytes: int) -> None:
        """Share an image-feature cache and a KV prefix cache (byte bounds, 0 = that cache off) among this
        engine's streamed requests (`stream`, `ContinuousBatch`); prefills then go row by row through them."""
        from mgm.inference.cached_prefill import EngineCaches

        self.caches = EngineCaches(self, image_bytes, prefix_bytes)

    # -- inputs ---------------------------------------------------------------------------------------
    def encode_prompt(self, request: Request) -> torch.Tensor:
        """The prompt's token ids [L], one IMAGE_TOKEN_INDEX per image (cached on the request)."""
        n_tags = request.prompt.count(DEFAULT_IMAGE_TOKEN)
        if n_tags != len(request.images):
            raise UserError(f"the prompt has {n_tags} <image> tags but {len(request.images)} images were given")
        if request.images and self.model.get_vision_tower() is None:
            raise UserError("this model has no vision tower; send text only")
        cached = request._encoded
        if cached is not None and cached[0] is self.tokenizer and cached[1] == request.prompt:
            return cached[2]
        ids = tokenizer_image_token(request.prompt, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        request._encoded = (self.tokenizer, request.prompt, ids)
        return ids

    def image_tensors(self, images: list[Image.Image | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
        lr, hr = images_to_batch(images, self.image_processor, self.model.mgm_settings)
        lr = lr.to(device=self.device, dtype=self.dtype)
        return lr, (hr.to(device=self.device, dtype=self.dtype) if hr is not None else None)

    def num_image_tokens(self) -> int:
        """Tokens one image occupies in the LLM's sequence (the profile's tokens per image)."""
        return self.profile.tokens_per_image

    def batch_inputs(self, requests: list[Request]) -> BatchInputs:
        """Left-padded ids and mask plus image blocks for `requests`; each prompt must fit the context."""
        rows = [self.encode_prompt(r) for r in requests]
        for r in requests:
            check_context(self, request_token_count(self, r))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
        images = images_aux = None
        if any(r.images for r in requests):
            # One image block per <image>, in row order; text-only rows consume a dummy block (as the
            # original's training batches do), so rows and blocks stay aligned.
            flat: list[Image.Image | None] = []
            for r in requests:
                flat.extend(r.images if r.images else [None])
            images, images_aux = self.image_tensors(flat)
        return BatchInputs(ids.to(self.device), mask.to(self.device), images, images_aux)

    def generate_kwargs(self) -> dict:
        """What every `model.generate` call of this engine passes: end-of-sequence and pad ids, and a fresh
        KV cache that appends in place (`mgm.model.kv_cache`; the stock one copies itself every token)."""
        return {"eos_token_id": self.eos_ids or None, "pad_token_id": self.pad_id, "use_cache": True,
                cache_keyword(): growing_cache()}

    # -- generation -----------------------------------------------------------------------------------
    def generate_ids(self, requests: list[Request]) -> torch.Tensor:
        """New token ids [B, T] (padded with the pad id) for requests sharing one set of sampling parameters."""
        params = requests[0].params
        inputs = self.batch_inputs(requests)
        kwargs = params.to_generate_kwargs() | self.generate_kwargs()
        if params.stop:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [KeywordsStoppingCriteria(params.stop, self.tokenizer, inputs.ids)])
        with self.lock, torch.inference_mode():
            return self.model.generate(inputs.ids, **inputs.generate_kwargs(), **kwargs)

    def generate(self, requests: list[Request]) -> list[str]:
        """Answers (cut at their stop strings, stripped) for requests sharing one set of sampling parameters."""
        if not requests:
            return []
        texts = [self.profile.decode(row) for row in self.generate_ids(requests)]
        return [trim_stop(t, requests[0].params.stop) for t in texts]

    def stream(self, request: Request, cancel: threading.Event | None = None) -> Iterator[str]:
        """Yield text pieces of one answer as they are generated (stop strings never appear).

        `cancel` (set by the caller, or here when the consumer stops early) ends generation at the next
        token. Beam search cannot stream: its answer comes as one piece.
        """
        if request.params.num_beams != 1:
            yield self.generate([request])[0]
            return
        from mgm.inference.rows import generate_rows

        cancel = cancel if cancel is not None else threading.Event()
        pieces: queue.Queue = queue.Queue()
        end = object()

        def run() -> None:
            try:
                if self.caches is not None:  # one row of a continuous batch, prefilled through the caches
                    from mgm.inference.continuous import decode_row

                    decode_row(self, request, on_text=pieces.put, cancelled=cancel.is_set)
                else:
                    generate_rows(self, [request], on_text=lambda i, piece: pieces.put(piece),
                                  cancelled=lambda i: cancel.is_set())
            except BaseException as exc:  # surfaced to the consumer below
                pieces.put(exc)
            pieces.put(end)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            while (item := pieces.get()) is not end:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()  # a consumer that left early stops the generation
            thread.join()
