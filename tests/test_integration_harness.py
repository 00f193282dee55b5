"""The core the toolkit adapters share (mgm.integrations.harness), without any toolkit installed.

Batched answers and scores equal one-at-a-time ones (images, several images, text-only rows mixed;
normal and HD checkpoints); a continuation's score equals a plain labelled forward pass; the greedy
flag is true exactly for what greedy decoding produced; the template comes from the checkpoint's
config; bad arguments are named.
"""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from mgm.errors import UserError
from mgm.integrations.harness import HarnessModel, Question, continuation_ids
from mgm.serve.engine import GenerationParams


def _images(n: int) -> list:
    return [Image.new("RGB", (40 + 12 * i, 32 + 4 * i), (60 * i % 255, 120, 200 - 30 * i)) for i in range(n)]


def _questions(harness: HarnessModel) -> list[Question]:
    """Image, image, text-only and (where two fit the tiny context: not HD) two-image questions."""
    a, b, c, d = _images(4)
    out = [Question("What is this?", [a]), Question("Describe the colour of the thing in detail.", [b]),
           Question("A question without an image.", [])]
    if 2 * harness.engine.num_image_tokens() < 400:
        out.append(Question("Compare <image> and <image>.", [c, d]))
    return out


@pytest.fixture(scope="module", params=["MGM-Tiny-Vicuna", "MGM-Tiny-Vicuna-HD"])
def harness(request, tiny_zoo):
    return HarnessModel(tiny_zoo["checkpoints"][request.param]["path"], conv_mode="vicuna_v1", device="cpu")


def test_batched_answers_equal_unbatched(harness):
    params = GenerationParams(temperature=0, max_new_tokens=10)
    questions = _questions(harness)
    batched = harness.answer(questions, params)
    assert batched == [harness.answer([q], params)[0] for q in questions]
    assert any(batched)


def test_stop_strings_cut_answers(harness):
    free = harness.answer(_questions(harness)[:2], GenerationParams(temperature=0, max_new_tokens=10))
    stop = free[0][len(free[0]) // 2:][:2]
    cut = harness.answer(_questions(harness)[:2], GenerationParams(temperature=0, max_new_tokens=10, stop=[stop]))
    assert cut[0] == free[0][:free[0].find(stop)].strip()


def test_scores_batched_equal_unbatched_and_a_labelled_forward(harness):
    from mgm.mm_utils import tokenizer_image_token

    questions = _questions(harness)
    continuations = [" red", " a long answer about colours", " no", " the left one"][:len(questions)]
    batched = harness.score(questions, continuations)
    for q, cont, (logprob, _) in zip(questions, continuations, batched):
        single = harness.score([q], [cont])[0]
        assert single[0] == pytest.approx(logprob, abs=1e-4)
        engine = harness.engine
        prompt = harness.prompt(q)
        prompt_ids = tokenizer_image_token(prompt, engine.tokenizer, return_tensors="pt")
        ids = tokenizer_image_token(prompt + cont, engine.tokenizer, return_tensors="pt")
        labels = ids.clone()
        labels[: prompt_ids.shape[0]] = -100
        images = images_aux = None
        if q.images:
            images, images_aux = engine.image_tensors(q.images)
        with torch.inference_mode():
            out = engine.model(input_ids=ids[None], labels=labels[None], images=images, images_aux=images_aux)
        assert logprob == pytest.approx(-float(out.loss) * int((labels != -100).sum()), rel=1e-4, abs=1e-3)


def test_greedy_flag_marks_what_greedy_decoding_produced(harness):
    engine = harness.engine
    tokenizer = engine.tokenizer
    questions = _questions(harness)
    params = GenerationParams(temperature=0, max_new_tokens=4)
    generated = engine.generate_ids(harness.requests(questions, params))
    checked = 0
    for q, row in zip(questions, generated):
        tokens = [t for t in row.tolist() if t not in engine.eos_ids and t != tokenizer.pad_token_id]
        text = tokenizer.decode(tokens)
        prompt = harness.prompt(q)
        prompt_ids = engine.encode_prompt(harness.requests([q], params)[0])
        if continuation_ids(engine, prompt, text, prompt_ids).tolist() != tokens:
            continue  # the decoded text re-tokenises differently: not the same continuation
        checked += 1
        assert harness.score([q], [text])[0][1] is True
        other = tokenizer.decode([(tokens[0] + 1) % len(tokenizer)] + tokens[1:])
        assert harness.score([q], [other])[0][1] is False
    assert checked >= 1


def test_template_comes_from_the_checkpoint_config(tiny_zoo):
    gemma = HarnessModel(tiny_zoo["checkpoints"]["MGM-Tiny-Gemma"]["path"], device="cpu")
    assert gemma.conv_mode == "gemma"
    assert "<start_of_turn>" in gemma.prompt(Question("hi"))


def test_bad_arguments_are_named(tiny_zoo, tmp_path, harness):
    with pytest.raises(UserError, match="not an MGM checkpoint"):
        HarnessModel(str(tmp_path))
    with pytest.raises(UserError, match="valid names"):
        HarnessModel(tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"], conv_mode="no_such_template")
    with pytest.raises(UserError, match="2 <image> tags but 1 images"):
        harness.prompt(Question("<image> and <image>", _images(1)))
    with pytest.raises(UserError, match="empty continuation"):
        harness.score([Question("x")], [""])
