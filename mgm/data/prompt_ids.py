"""Prompt text with `<image>` tags -> token ids, one IMAGE_TOKEN_INDEX per image (the original's rule).

Used by the engine, the processor, the vLLM prompt path, the toolkit harness and training alike.
"""
from __future__ import annotations

import torch

from mgm.constants import IMAGE_TOKEN_INDEX


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX, return_tensors=None):
    """Tokenise each `<image>`-separated chunk on its own, keep one leading BOS, put `image_token_index`
    where every `<image>` was (docs/original.md#tokenizer-image-token)."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    input_ids: list[int] = []
    offset = 0
    bos = getattr(tokenizer, "bos_token_id", None)
    if chunks and chunks[0] and bos is not None and chunks[0][0] == bos:
        offset = 1
        input_ids.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i > 0:
            input_ids.append(image_token_index)
        input_ids.extend(chunk[offset:])
    if return_tensors is not None:
        if return_tensors == "pt":
            return torch.tensor(input_ids, dtype=torch.long)
        raise ValueError(f"Unsupported tensor type: {return_tensors}")
    return input_ids
