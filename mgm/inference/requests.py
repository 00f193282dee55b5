"""What callers hand the inference engine and what it hands back: sampling parameters, requests, row results."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from mgm.inference.sampling import is_greedy


@dataclass
class GenerationParams:
    """Sampling parameters of one request (see `mgm.inference.sampling.is_greedy` for the greedy rule)."""

    temperature: float = 0.2
    top_p: float | None = None
    max_new_tokens: int = 512
    num_beams: int = 1
    stop: list[str] = field(default_factory=list)

    @property
    def do_sample(self) -> bool:
        return not is_greedy(self.temperature)

    def key(self) -> tuple:
        """Requests with equal keys can share one `generate` call."""
        return (round(self.temperature, 6), self.top_p, self.num_beams, tuple(self.stop))

    def to_generate_kwargs(self) -> dict:
        kwargs: dict = dict(do_sample=self.do_sample, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens)
        if self.do_sample:
            kwargs["temperature"] = self.temperature
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:  # greedy without sampling parameters: newer generation-config validation warns otherwise
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class Request:
    """A fully templated prompt (with one `<image>` per image) and its images."""

    prompt: str
    images: list[Image.Image] = field(default_factory=list)
    params: GenerationParams = field(default_factory=GenerationParams)
    # (tokenizer, prompt, ids) of the last encode_prompt: a request is sized by its server, admitted by
    # the batcher and prefilled, and each of them needs the same ids
    _encoded: tuple[Any, str, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)


@dataclass
class RowResult:
    """Outcome of one streamed row (`generate_rows`, `ContinuousBatch`, the batcher's tickets).

    finish_reason: "stop" (end-of-sequence token or stop string), "length" (its max_new_tokens reached)
    or "cancelled" (its `cancelled` callback turned true). completion_tokens counts generated tokens,
    the end-of-sequence token excluded.
    """

    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None
