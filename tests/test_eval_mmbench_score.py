"""`mgm eval mmbench` prints an accuracy when the split's TSV carries the answers (the dev split).

The original only writes the MMBench server's .xlsx; the printed score is checked against a count made
here from the raw answers file and the TSV, and the counting rule against hand-made predictions.
"""
from __future__ import annotations

import json
import re

import pytest

from mgm.eval.mmbench_accuracy import mmbench_accuracy, option_letter

pd = pytest.importorskip("pandas")
pytest.importorskip("openpyxl")

SPLIT = "mmbench_dev_20230712"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from mgm.eval.tiny_benchmarks import build_tiny_benchmarks

    root = tmp_path_factory.mktemp("mmbench_bench")
    build_tiny_benchmarks(root, seed=0)
    return root


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from mgm.zoo.tiny import build_tiny_zoo

    zoo = build_tiny_zoo(tmp_path_factory.mktemp("mmbench_zoo"), seed=0, families=["vicuna"])
    return zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]


def test_option_letter_reads_letters_and_option_texts():
    options = {"A": "red", "B": "blue", "C": "green"}
    assert option_letter("B", options) == "B"
    assert option_letter("(C) green", options) == "C"
    assert option_letter("A. red", options) == "A"
    assert option_letter("Blue.", options) == "B"
    assert option_letter("purple", options) is None
    assert option_letter(float("nan"), options) is None and option_letter(None, options) is None


def test_accuracy_counts_right_answers_per_category(tmp_path):
    tsv = tmp_path / "dev.tsv"
    pd.DataFrame({"index": [1, 2, 3, 4], "question": ["q"] * 4, "A": ["red"] * 4, "B": ["blue"] * 4,
                  "answer": ["A", "B", "B", "A"], "category": ["colour", "colour", "shape", "shape"]}
                 ).to_csv(tsv, sep="\t", index=False)
    xlsx = tmp_path / "sub.xlsx"
    pd.DataFrame({"index": [1, 2, 3, 4], "question": ["q"] * 4, "A": ["red"] * 4, "B": ["blue"] * 4,
                  "prediction": ["A", "red", "blue", float("nan")]}).to_excel(xlsx, index=False)
    assert mmbench_accuracy(str(tsv), str(xlsx)) == {"all": (2, 4), "colour": (1, 2), "shape": (1, 2)}
    pd.read_table(tsv).drop(columns=["answer"]).to_csv(tsv, sep="\t", index=False)
    assert mmbench_accuracy(str(tsv), str(xlsx)) is None  # a test split: only the server can score it


def test_mgm_eval_mmbench_prints_the_accuracy(bench, model_path, tmp_path, capsys):
    from mgm.__main__ import main as mgm_main

    assert mgm_main(["eval", "mmbench", "--model-path", model_path, "--data-root", str(bench), "--work-dir",
                     str(tmp_path), "--device", "cpu", "--max-new-tokens", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    found = re.search(rf"MMBench {SPLIT} accuracy \(single round, option letter\): ([\d.]+)% \((\d+)/(\d+)\)", out)
    assert found, out
    # the same count, made from the runner's raw answers and the TSV
    questions = pd.read_table(bench / "mmbench" / f"{SPLIT}.tsv").set_index("index")
    answers_file = next((bench / "mmbench" / "answers" / SPLIT).rglob("*.jsonl"))
    answers = [json.loads(line) for line in answers_file.read_text().splitlines() if line.strip()]
    right = 0
    for record in answers:
        row = questions.loc[record["question_id"]]
        options = {k: row[k] for k in "ABCD" if isinstance(row[k], str)}
        right += option_letter(record["text"], options) == row["answer"]
    assert (int(found.group(2)), int(found.group(3))) == (right, len(questions))
    assert float(found.group(1)) == pytest.approx(100.0 * right / len(questions), abs=0.005)
