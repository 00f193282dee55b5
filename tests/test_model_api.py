"""The Python API a user calls: the README's generate example run as written (on a tiny checkpoint with
the ConvNeXt tower), and the KV-cache keyword of current transformers (no deprecation warning, the
original's `past_key_values` still accepted)."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from mgm.model.arch import cache_keyword, output_cache

ROOT = Path(__file__).resolve().parents[1]


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


def readme_generate_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Inference: Python API and CLI"):]
    return section[section.index("```python\n") + len("```python\n"): section.index("```\n", section.index("```python"))]


def test_readme_generate_example_runs_and_uses_the_high_res_branch(tiny_zoo, loaded_models, monkeypatch, capsys):
    from PIL import Image

    from mgm.conversation import conv_templates, template_for_model_config
    from mgm.serve.engine import GenerationParams, InferenceEngine, Request

    name = "MGM-Tiny-Vicuna"
    path = tiny_zoo["checkpoints"][name]["path"]
    code, n = re.subn(r'^model_path = ".*"$', f"model_path = {path!r}", readme_generate_snippet(), flags=re.M)
    assert n == 1
    monkeypatch.chdir(ROOT)  # the snippet's image path is relative to the repository
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.strip()
    assert namespace["images_aux"] is not None and printed == namespace["answer"]

    # The same answer as the engine every front end uses (greedy, same template and budget).
    tok, model, proc, ctx = loaded_models(name)
    conv = conv_templates[template_for_model_config(model.config, tok)].copy()
    conv.append_message(conv.roles[0], "<image>\n" + namespace["question"])
    conv.append_message(conv.roles[1], None)
    image = Image.open(ROOT / namespace["image_file"])
    expected = InferenceEngine(tok, model, proc, ctx).generate(
        [Request(conv.get_prompt(), [image], GenerationParams(temperature=0, max_new_tokens=32))])[0]
    assert printed == expected.strip()
