"""`pipeline("image-text-to-text")`, AutoProcessor and AutoModelForImageTextToText on every tiny family:
the same greedy tokens as `load_pretrained_model` + mgm's engine."""
from __future__ import annotations

import pytest
from PIL import Image

import mgm.model  # noqa: F401  (registers the Auto classes)

CHECKPOINTS = ["MGM-Tiny-Vicuna", "MGM-Tiny-Vicuna-HD", "MGM-Tiny-Vicuna-Bin", "MGM-Tiny-LLaMA3", "MGM-Tiny-Gemma",
               "MGM-Tiny-Gemma-HD", "MGM-Tiny-Mistral", "MGM-Tiny-Mixtral", "MGM-Tiny-Yi"]
MAX_NEW = 12


def image() -> Image.Image:
    img = Image.new("RGB", (48, 36), (30, 60, 200))
    img.paste((240, 220, 10), (5, 5, 30, 20))
    return img


def messages() -> list[dict]:
    return [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "image", "image": image()},
                                         {"type": "text", "text": "What is in the picture?"}]}]


def engine_tokens(loaded_models, tiny_zoo, name: str) -> tuple[list[int], list[int]]:
    """(greedy new tokens, eos ids) from load_pretrained_model + InferenceEngine with mgm's own template."""
    from mgm.conversation import get_template
    from mgm.serve.engine import GenerationParams, InferenceEngine, Request
    from mgm.serve.openai_api import apply_system

    tokenizer, model, image_processor, context_len = loaded_models(name)
    engine = InferenceEngine(tokenizer, model, image_processor, context_len)
    conv = get_template(tiny_zoo["checkpoints"][name]["conv_mode"])
    leftover = apply_system(conv, "Answer briefly.")
    question = "<image>\nWhat is in the picture?"
    conv.append_message(conv.roles[0], (leftover + "\n\n" + question) if leftover else question)
    conv.append_message(conv.roles[1], None)
    request = Request(conv.get_prompt(), [image()], GenerationParams(temperature=0.0, max_new_tokens=MAX_NEW))
    return engine.generate_ids([request])[0].tolist(), engine.eos_ids


def until_eos(tokens, eos_ids) -> list[int]:
    out = []
    for t in (tokens.tolist() if hasattr(tokens, "tolist") else tokens):
        if t in eos_ids:
            break
        out.append(t)
    return out


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_pipeline_and_auto_classes_match_engine(name, tiny_zoo, loaded_models):
    from transformers import AutoProcessor, pipeline

    from mgm.processing import MGMProcessor

    path = tiny_zoo["checkpoints"][name]["path"]
    expected, eos_ids = engine_tokens(loaded_models, tiny_zoo, name)
    expected = until_eos(expected, eos_ids)
    assert expected, "the engine produced no token before end-of-sequence: the comparison would be empty"

    pipe = pipeline("image-text-to-text", model=path)
    assert isinstance(pipe.processor, MGMProcessor)
    assert type(pipe.model).__name__ == type(loaded_models(name)[1]).__name__
    result = pipe(text=messages(), max_new_tokens=MAX_NEW, generate_kwargs={"do_sample": False}, return_tensors=True)
    assert until_eos(result[0]["generated_token_ids"], eos_ids) == expected

    processor = AutoProcessor.from_pretrained(path)
    inputs = processor.apply_chat_template(messages(), add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    out = pipe.model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    assert until_eos(out[0], eos_ids) == expected

    answer = pipe(text=messages(), max_new_tokens=MAX_NEW, generate_kwargs={"do_sample": False})[0]["generated_text"][-1]
    assert answer["role"] == "assistant"
    assert answer["content"] == processor.decode(out[0], skip_special_tokens=True)


BARE_IMPORT = """
import sys
import mgm
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, pipeline

exported, original, saved = sys.argv[1:4]
names = [type(AutoProcessor.from_pretrained(exported)).__name__,
         type(AutoProcessor.from_pretrained(saved)).__name__,
         type(AutoImageProcessor.from_pretrained(exported)).__name__,
         type(AutoModelForImageTextToText.from_pretrained(exported)).__name__,
         type(pipeline("image-text-to-text", model=original).processor).__name__]
print(" ".join(names))
"""


def test_bare_import_mgm_is_enough_for_the_auto_classes(tiny_zoo, tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from mgm.model.export import export_self_contained
    from mgm.processing import MGMProcessor

    source = tiny_zoo["checkpoints"]["MGM-Tiny-Gemma"]["path"]
    exported = export_self_contained(source, tmp_path / "exported")
    saved = tmp_path / "saved"  # a checkpoint folder the processor was saved into
    shutil.copytree(source, saved)
    MGMProcessor.from_pretrained(saved).save_pretrained(saved)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", BARE_IMPORT, str(exported), source, str(saved)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["MGMProcessor", "MGMProcessor", "MGMImageProcessor", "MGMGemmaForCausalLM",
                                   "MGMProcessor"]
