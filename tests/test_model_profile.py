"""One checkpoint per family through every front end: they all report the checkpoint's one `ModelProfile`.

Front ends: `load_pretrained_model` + `InferenceEngine`, the CLI (`--debug` prints its prompt), the model
worker and its `/v1` prompt builder, the eval runners and `mgm eval`, the toolkit harness, export, and
the transformers path (`MGMProcessor`, `AutoProcessor`, `AutoTokenizer`). Each must report the same
template, stop strings, EOS ids, pad id, context limit and tokens per image, build the same prompt for
one question about two images, and turn the same generated ids (byte-fallback runs included) into the
same text.
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import sys

import pytest
from PIL import Image

CHECKPOINTS = ["MGM-Tiny-Vicuna", "MGM-Tiny-LLaMA3", "MGM-Tiny-Gemma", "MGM-Tiny-Mistral", "MGM-Tiny-Mixtral",
               "MGM-Tiny-Yi", "MGM-Tiny-Gemma-HD"]
QUESTION = "Which one is larger?"


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (24, 36), (10, 10, 200))]


def _answer_ids(tokenizer) -> list[int]:
    """Ids of an answer with a byte run between words that starts valid ("c") and turns invalid: where
    sentencepiece, a ByteFallback decoder and a streaming decoder used to part ways."""
    ids = tokenizer("white", add_special_tokens=False).input_ids
    byte_ids = [tokenizer.convert_tokens_to_ids(f"<0x{v:02X}>") for v in (0x63, 0xEB, 0x14, 0xE3)]
    if all(isinstance(i, int) and i != tokenizer.unk_token_id for i in byte_ids):
        ids += byte_ids
    ids += tokenizer("mage is", add_special_tokens=False).input_ids
    eos = tokenizer.eos_token_id
    return ids + ([eos] if eos is not None else [])


def _engine_facts(engine) -> dict:
    from mgm.inference.engine import context_limit

    return {"template": engine.profile.template, "stop_strings": list(engine.profile.stop_strings),
            "eos_ids": list(engine.eos_ids), "pad_id": engine.pad_id, "context_limit": context_limit(engine),
            "tokens_per_image": engine.num_image_tokens()}


def _streamed(tokenizer, ids: list[int]) -> str:
    """The text the streaming paths (`engine.stream`, workers, CLI) print for `ids`."""
    from mgm.inference.decoding import IncrementalDecoder

    decoder = IncrementalDecoder(tokenizer)
    return ("".join(decoder.push(i) for i in ids) + decoder.flush()).strip()


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for k, image in enumerate(_images()):
        paths.append(folder / f"{k}.png")
        image.save(paths[-1])
    return paths


@pytest.fixture(scope="module", params=CHECKPOINTS)
def reports(request, tiny_zoo, loaded_models, image_files, tmp_path_factory) -> dict:
    """{front end: {"facts": ..., "prompt": ..., "text": ...}} for one checkpoint (what each reports)."""
    from transformers import AutoProcessor, AutoTokenizer

    import mgm

    from mgm.eval.answers import EvalItem
    from mgm.eval.cli import default_conv_mode
    from mgm.eval.runner import EvalModel, _Generator
    from mgm.inference.engine import InferenceEngine
    from mgm.inference.requests import GenerationParams
    from mgm.integrations.harness import HarnessModel, Question
    from mgm.model.export import export_self_contained
    from mgm.processing import MGMProcessor
    from mgm.profile import checkpoint_profile, profile_of
    from mgm.serve.model_worker import ModelWorker, WorkerSettings
    from mgm.serve.openai_api import messages_to_prompt
    from mgm.serve.openai_protocol import ChatMessage

    mgm.register()
    name = request.param
    path = tiny_zoo["checkpoints"][name]["path"]
    tokenizer, model, processor, context_len = loaded_models(name)
    ids = _answer_ids(tokenizer)
    out: dict = {}

    profile = profile_of(model)
    out["loader"] = {"facts": profile.facts(), "prompt": profile.prompt(QUESTION, 2), "text": profile.decode(ids)}
    out["vision encoder"] = {"facts": {**profile.facts(),
                                       "tokens_per_image": model.get_model().vision_encoder.tokens_per_image}}

    engine = InferenceEngine(tokenizer, model, processor, context_len)
    out["engine.generate"] = {"facts": _engine_facts(engine), "text": engine.profile.decode(ids)}
    out["engine.stream"] = {"text": _streamed(engine.tokenizer, ids)}

    worker = ModelWorker.load(WorkerSettings(model_path=path, device="cpu", no_register=True))
    messages = [ChatMessage(role="user", content=[
        {"type": "image_url", "image_url": {"url": "a"}}, {"type": "image_url", "image_url": {"url": "b"}},
        {"type": "text", "text": QUESTION}])]
    v1_prompt, _ = messages_to_prompt(messages, worker.conv_mode, lambda url, what: _images()[0])
    out["worker"] = {"facts": _engine_facts(worker.engine), "prompt": v1_prompt,
                     "text": _streamed(worker.engine.tokenizer, ids)}

    conv_mode = default_conv_mode(path)
    out["mgm eval"] = {"facts": checkpoint_profile(path).facts()}
    eval_model = EvalModel.load(argparse.Namespace(model_path=path, conv_mode=conv_mode, device="cpu"))
    item = EvalItem(key=0, text=QUESTION, n_images=2, load_images=_images, make_record=dict, where="q0")
    generator = _Generator(eval_model, conv_mode, GenerationParams(), fmt=None)
    out["eval runner"] = {"facts": _engine_facts(eval_model.engine), "prompt": generator.prompt(item),
                          "text": eval_model.engine.profile.decode(ids)}

    harness = HarnessModel(path, device="cpu")
    out["harness"] = {"facts": _engine_facts(harness.engine), "prompt": harness.prompt(Question(QUESTION, _images())),
                      "text": harness.engine.profile.decode(ids)}

    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": QUESTION}]}]
    for label, loaded in (("MGMProcessor", MGMProcessor.from_pretrained(path)),
                          ("AutoProcessor", AutoProcessor.from_pretrained(path))):
        out[label] = {"facts": loaded.profile.facts(),
                      "prompt": loaded.apply_chat_template(chat, add_generation_prompt=True),
                      "text": loaded.decode(ids, skip_special_tokens=True)}
    # the loaded tokenizer saved and loaded back with AutoTokenizer keeps its class, hence its text
    saved = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(saved)
    reloaded = AutoTokenizer.from_pretrained(saved)
    assert type(reloaded) is type(tokenizer)
    out["AutoTokenizer (saved)"] = {"text": reloaded.decode(ids, skip_special_tokens=True)}

    exported = export_self_contained(path, tmp_path_factory.mktemp("export") / name)
    manifest = json.loads((exported / "mgm_export.json").read_text()) if (
        exported / "mgm_export.json").is_file() else None
    out["export"] = {"facts": MGMProcessor.from_pretrained(exported).profile.facts()}
    if manifest is not None:
        out["export"]["facts"] = {**out["export"]["facts"], "template": manifest["default_chat_template"]}

    if 2 * profile.tokens_per_image < profile.context_limit:  # (tiny HD checkpoints: two images overflow)
        out["cli"] = {"prompt": _cli_prompt(path, image_files)}
    return out


def _cli_prompt(path, image_files) -> str:
    from mgm.serve.cli import main

    stdin, stdout = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = io.StringIO(QUESTION + "\n"), io.StringIO()
    try:
        main(["--model-path", str(path), "--image-file", ",".join(map(str, image_files)), "--device", "cpu",
              "--temperature", "0", "--max-new-tokens", "2", "--debug"])
        printed = sys.stdout.getvalue()
    finally:
        sys.stdin, sys.stdout = stdin, stdout
    line = next(line for line in printed.splitlines() if line.startswith("{'prompt'"))
    return ast.literal_eval(line)["prompt"]


def _same(reports: dict, key: str) -> None:
    values = {label: r[key] for label, r in reports.items() if key in r}
    reference = values["loader"]
    assert len(values) >= 4, values
    for label, value in values.items():
        assert value == reference, (key, label, value, reference)


def test_every_front_end_reports_the_same_profile(reports):
    _same(reports, "facts")


def test_every_front_end_builds_the_same_two_image_prompt(reports):
    _same(reports, "prompt")
    assert "Image 1:<image>" in reports["loader"]["prompt"] and "Image 2:<image>" in reports["loader"]["prompt"]


def test_every_front_end_decodes_the_same_ids_to_the_same_text(reports):
    _same(reports, "text")


def test_profile_is_frozen_and_template_choice_is_validated(loaded_models):
    import dataclasses

    from mgm.errors import UserError
    from mgm.profile import profile_of

    profile = profile_of(loaded_models("MGM-Tiny-LLaMA3")[1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.template = "vicuna_v1"  # type: ignore[misc]
    assert profile.template == "llama_3" and "<|eot_id|>" in profile.stop_strings
    eot = profile.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert eot in profile.eos_ids
    vicuna = profile.with_template("vicuna_v1")
    assert vicuna.template == "vicuna_v1" and vicuna.inferred_template == "llama_3"
    assert eot not in vicuna.eos_ids or eot in profile.model_eos_ids
    with pytest.raises(UserError, match="vicuna_v1"):
        profile.with_template("no-such-template")


def test_checkpoint_recorded_template_wins_over_the_legacy_rule(tiny_zoo, tmp_path):
    import shutil

    from mgm.profile import checkpoint_profile

    src = tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]
    folder = tmp_path / "ckpt"
    shutil.copytree(src, folder)
    config = json.loads((folder / "config.json").read_text())
    assert checkpoint_profile(folder).template == "vicuna_v1"
    (folder / "config.json").write_text(json.dumps({**config, "conv_template": "chatml_direct"}))
    assert checkpoint_profile(folder).template == "chatml_direct"
    assert checkpoint_profile(folder, template="llama_3").template == "llama_3"


@pytest.mark.parametrize("name", CHECKPOINTS[:6])
def test_streamed_text_adds_up_to_the_profile_text(loaded_models, name):
    """For random answers mixing byte pieces and words, the streaming decoder's pieces join to exactly
    `profile.decode` (what `engine.generate`, eval and the toolkits return)."""
    import random

    from mgm.profile import profile_of

    profile = profile_of(loaded_models(name)[1])
    tok = profile.tokenizer
    byte = [i for i in (tok.convert_tokens_to_ids(f"<0x{v:02X}>") for v in range(256))
            if isinstance(i, int) and i != tok.unk_token_id]
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.choice(byte) if byte and rng.random() < 0.4 else rng.randrange(3, len(tok))
               for _ in range(rng.randint(1, 10))]
        assert _streamed(tok, ids) == profile.decode(ids).strip(), (name, ids)


def test_start_end_image_tags_reach_the_chat_template(tiny_zoo, tmp_path):
    """A checkpoint using <im_start>/<im_end>: the processor's chat template places images as the profile does."""
    import shutil

    from mgm.processing import MGMProcessor

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_use_im_start_end": True}))
    processor = MGMProcessor.from_pretrained(folder)
    profile = processor.profile
    assert profile.image_prefix == "<im_start><image><im_end>\n"
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": QUESTION}]}]
    rendered = processor.apply_chat_template(chat, add_generation_prompt=True)
    assert rendered == profile.prompt(QUESTION, 2)
    assert "<im_start>Image 1:<image><im_end>\n<im_start>Image 2:<image><im_end>\n" + QUESTION in rendered
