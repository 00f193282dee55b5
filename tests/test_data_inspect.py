"""`python -m mgm.data.inspect`: label masking per template (the unmasked tokens decode to exactly the
replies and their end-of-turn text), image placeholders, checkpoint vs bare tokenizer, report format."""
from __future__ import annotations

import json

import pytest
from test_train_support import make_dataset, tiny_zoo

from mgm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mgm.data import inspect as inspect_cli

REPLIES = ["A red circle.", "It is round."]
# template -> (tiny tokenizer family, what the template writes after each reply)
TEMPLATES = {
    "plain": ("vicuna", "\n"),
    "v1": ("vicuna", "</s>"),
    "vicuna_v1": ("vicuna", "</s>"),
    "llama_2": ("vicuna", " </s>"),
    "llama_3": ("llama3", "<|eot_id|>"),
    "gemma": ("gemma", "<end_of_turn>\n<eos>"),
    "mistral_instruct": ("mistral", " </s>"),
    "chatml_direct": ("yi", "<|im_end|>"),
    "mpt": ("yi", "<|im_end|>"),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return tiny_zoo(tmp_path_factory)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("inspect"), n=4)
    two_rounds = {"id": "two", "image": "images/0000.png", "conversations": [
        {"from": "human", "value": "What is this?\n<image>"}, {"from": "gpt", "value": REPLIES[0]},
        {"from": "human", "value": "Which shape?"}, {"from": "gpt", "value": REPLIES[1]}]}
    one_round = {"id": "one", "image": "images/0001.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": REPLIES[0]}]}
    text_only = {"id": "txt", "conversations": [
        {"from": "human", "value": "Hello?"}, {"from": "gpt", "value": REPLIES[1]}]}
    (root / "masking.json").write_text(json.dumps([two_rounds, one_round, text_only]))
    return root


def run_json(capsys, *argv) -> dict:
    assert inspect_cli.main(list(argv) + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def supervised_runs(report: dict) -> list[list[int]]:
    runs, current = [], []
    for token, label in zip(report["input_ids"], report["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_unmasked_tokens_are_exactly_the_replies(capsys, zoo, data, template):
    from transformers import AutoTokenizer

    family, end = TEMPLATES[template]
    index = 1 if template == "plain" else 0  # `plain` takes one image + one caption
    report = run_json(capsys, "--data-path", str(data / "masking.json"), "--model-path", zoo["llms"][family],
                      "--version", template, "--index", str(index))
    assert report["template"] == template
    assert report["input_ids"].count(IMAGE_TOKEN_INDEX) == 1
    assert "<image>" in report["prompt"] and report["image_shapes"] is None  # bare tokenizer
    tokenizer = AutoTokenizer.from_pretrained(zoo["llms"][family])
    runs = supervised_runs(report)
    replies = REPLIES[:1] if template == "plain" else REPLIES
    assert len(runs) == len(replies)
    for run, reply in zip(runs, replies):
        assert tokenizer.decode(run).strip() == (reply + end).strip()
    assert report["num_supervised"] == sum(len(r) for r in runs)
    # nothing of the prompt outside the replies is supervised: everything before the first reply is masked
    first = report["labels"].index(runs[0][0])
    assert all(label == IGNORE_INDEX for label in report["labels"][:first])


def test_text_only_sample_has_no_image_placeholder(capsys, zoo, data):
    report = run_json(capsys, "--data-path", str(data / "masking.json"), "--model-path", zoo["llms"]["vicuna"],
                      "--version", "v1", "--index", "2")
    assert IMAGE_TOKEN_INDEX not in report["input_ids"] and report["images"] == []
    assert report["supervised_text"].strip().endswith("</s>")


def test_pad_token_follows_the_version_rules(capsys, zoo, data):
    args = ["--data-path", str(data / "masking.json"), "--index", "2"]
    v1 = run_json(capsys, *args, "--model-path", zoo["llms"]["vicuna"], "--version", "v1")
    assert v1["pad_token"] == "<unk>"
    llama3 = run_json(capsys, *args, "--model-path", zoo["llms"]["llama3"], "--version", "llama_3")
    assert llama3["pad_token"] == "<|reserved_special_token_0|>"


def test_checkpoint_loads_images_with_its_settings(capsys, zoo, data):
    ckpt = zoo["checkpoints"]["MGM-Tiny-Vicuna-HD"]["path"]
    report = run_json(capsys, "--data-path", str(data / "masking.json"), "--model-path", ckpt, "--version", "v1")
    assert report["image_shapes"] == {"images": [1, 5, 3, 32, 32], "images_aux": [1, 3, 128, 128]}
    assert report["model_max_length"] == 512  # the checkpoint's tokenizer_model_max_length


def test_human_report_and_errors(capsys, zoo, data):
    argv = ["--data-path", str(data / "masking.json"), "--model-path", zoo["llms"]["vicuna"], "--version", "v1"]
    assert inspect_cli.main(argv) == 0
    out = capsys.readouterr().out
    for section in ("--- prompt ---", "--- input_ids ---", "--- labels ---", "--- supervised text ---", "'<image>'"):
        assert section in out
    with pytest.raises(SystemExit) as exc:
        inspect_cli.main(argv + ["--index", "9"])
    assert exc.value.code == 2
    assert "out of range" in capsys.readouterr().err
