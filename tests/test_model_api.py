"""The Python API a user calls: the KV-cache keyword of current transformers (no deprecation warning,
the original's `past_key_values` still accepted)."""
from __future__ import annotations

import warnings

import pytest
import torch
from transformers import DynamicCache

from mgm.model.arch import cache_keyword, output_cache


@pytest.mark.parametrize("name", ["MGM-Tiny-Vicuna", "MGM-Tiny-Gemma"])
def test_kv_cache_keywords_without_deprecation_warnings(loaded_models, name):
    tok, model, _, _ = loaded_models(name)
    ids = torch.tensor([[1, 5, 6, 7]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            full = model(input_ids=ids).logits
            first = model(input_ids=ids[:, :3], past_key_values=DynamicCache(), use_cache=True)
            step = model(input_ids=ids[:, 3:], use_cache=True, **{cache_keyword(): output_cache(first)})
            model.generate(ids, max_new_tokens=2, do_sample=False)
    assert torch.allclose(step.logits[0, -1], full[0, -1], atol=1e-5)
    with pytest.raises(TypeError, match="not both"):
        model(input_ids=ids, past_key_values=DynamicCache(), cache=DynamicCache())
