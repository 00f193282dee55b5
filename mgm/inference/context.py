"""How long a request is and whether it fits: the one context check every generation path makes.

`request_token_count` counts a prompt as the model sees it (each image as its profile's tokens per image),
`check_context` says how many new tokens fit. Kept apart from the engine so that the paths the engine
itself starts (continuous batching, cached prefill) can use it without importing the engine.
Shapes: none (token counts).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mgm.errors import UserError
from mgm.inference.requests import Request

if TYPE_CHECKING:  # annotations only
    from mgm.inference.engine import InferenceEngine


def request_token_count(engine: InferenceEngine, request: Request) -> int:
    """Prompt length in tokens as the model sees it (every image counted as `num_image_tokens()`)."""
    ids = engine.encode_prompt(request)
    return int(ids.shape[-1]) + (engine.num_image_tokens() - 1) * len(request.images)


def context_limit(engine: InferenceEngine) -> int:
    """The model's position limit (the profile's)."""
    return engine.profile.context_limit


def check_context(engine: InferenceEngine, prompt_tokens: int) -> int:
    """Room left for new tokens after a prompt of `prompt_tokens`; UserError when not even one fits."""
    limit = context_limit(engine)
    if prompt_tokens + 1 > limit:
        raise UserError(f"the prompt is {prompt_tokens} tokens (image tokens included), over the model's "
                        f"context of {limit}; shorten it or start a new conversation")
    return limit - prompt_tokens
