"""`python -m mgm.data.check`: validates a whole file, names every bad sample, exits 1 on errors."""
from __future__ import annotations

import json

import pytest
from test_train_support import make_dataset, tiny_zoo

from mgm.data import check as check_cli


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return tiny_zoo(tmp_path_factory)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("check"), n=6)
    samples = json.loads((root / "stage2.json").read_text())
    (root / "images" / "junk.png").write_bytes(b"definitely not a png")
    bad = [
        {"id": "lost", "image": "images/lost.png", "conversations": samples[0]["conversations"]},
        {"id": "junk", "image": "images/junk.png", "conversations": samples[0]["conversations"]},
        {"id": "mute", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": " "}]},
        {"id": "order", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
        {"id": "long", "image": "images/0000.png", "conversations": [  # ~100 text + 64 image tokens
            {"from": "human", "value": "<image>\n" + "word " * 50}, {"from": "gpt", "value": "fine"}]},
        {"id": "cut", "conversations": [  # the reply lies beyond 200 tokens: nothing left to supervise
            {"from": "human", "value": "word " * 300}, {"from": "gpt", "value": "fine"}]},
    ]
    with open(root / "mixed.jsonl", "w") as handle:
        for sample in samples + bad:
            handle.write(json.dumps(sample) + "\n")
        handle.write("{not json\n")
    return root


def test_clean_file_passes(capsys, data):
    assert check_cli.main(["--data-path", str(data / "stage2.json"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    samples = json.loads((data / "stage2.json").read_text())
    assert f"checked {len(samples)} samples" in out and "errors: none" in out
    assert "masking and length not checked" in out


def test_bad_samples_are_named_and_counted(capsys, data, zoo):
    code = check_cli.main(["--data-path", str(data / "mixed.jsonl"), "--model-path", zoo["llms"]["vicuna"],
                           "--version", "v1", "--model-max-length", "200", "--image-tokens", "64",
                           "--workers", "2", "--json"])
    assert code == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["errors"] == {"json": 1, "format": 1, "missing_image": 1, "bad_image": 1, "empty_target": 2}
    assert {p["sample_id"] for p in summary["problems"] if p["kind"] == "over_long"} == {"long", "pair-0"}
    by_id = {p["sample_id"]: p for p in summary["problems"]}
    assert by_id["lost"]["kind"] == "missing_image" and by_id["lost"]["image"].endswith("images/lost.png")
    assert by_id["junk"]["kind"] == "bad_image" and "junk.png" in by_id["junk"]["reason"]
    assert by_id["mute"]["kind"] == "empty_target"
    assert by_id["order"]["kind"] == "format"
    assert by_id["long"]["kind"] == "over_long" and "model_max_length=200" in by_id["long"]["reason"]
    assert by_id["cut"]["kind"] == "empty_target" and "beyond model_max_length=200" in by_id["cut"]["reason"]
    assert summary["bad_samples"] == 6 and summary["text_only_samples"] >= 2


def test_text_report_lists_errors_first(capsys, data):
    assert check_cli.main(["--data-path", str(data / "mixed.jsonl"), "--workers", "1", "--max-report", "3"]) == 1
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith(("error [", "warning ["))]
    assert len(lines) == 3 and all(line.startswith("error [") for line in lines)
    assert "sample id='lost'" in out and "lost.png does not exist" in out
