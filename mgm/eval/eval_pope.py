"""POPE scorer: yes/no hallucination metrics per COCO-POPE split.

Run (same flags as the original):

    python -m mgm.eval.eval_pope --annotation-dir data/pope/coco \\
        --question-file data/pope/llava_pope_test.jsonl --result-file answers/MGM-7B.jsonl

`--annotation-dir` holds `coco_pope_<category>.json` files (JSONL, one `{"label": "yes"|"no", ...}`
per line, e.g. adversarial / popular / random). The question file maps `question_id` -> `category`;
the answers file is JSONL `{question_id, text}`. Categories are scored in sorted file-name order.

Rules of the original (kept for parity):
* an answer is reduced to its first sentence (text before the first "."), commas are removed, and it
  is split on single spaces; if a word equals "No", "not" or "no" the prediction is "no", else "yes"
  (so "No, it is not" -> no, "Yes." -> yes, "NO" -> yes);
* the labels of the annotation file and the answers of that category are paired POSITIONALLY (the
  i-th label with the i-th answer of the category in answers-file order; extra items are ignored),
  while the yes-ratio counts all answers of the category.
Printed per category: `Category: X, # samples: N`, the TP/FP/TN/FN line, Accuracy, Precision, Recall,
F1 score, Yes ratio, a `%.3f` summary line `f1, acc, precision, recall, yes_ratio`, and a separator.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

from mgm.errors import UserError, exit_on_user_error
from mgm.eval.scorer_io import read_jsonl, require_dir


def parse_pope_answer(text: str) -> str:
    """Map a free-form answer to "yes" or "no" by the original POPE rule (module docstring)."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    if "No" in words or "not" in words or "no" in words:
        return "no"
    return "yes"


@dataclass(frozen=True)
class PopeMetrics:
    """Confusion counts and derived metrics of one POPE split (positive class = "yes")."""

    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float


def _ratio(num: float, den: float) -> float:
    # The original divides unguarded (ZeroDivisionError); 0.0 keeps degenerate splits printable.
    return num / den if den else 0.0


def compute_pope_metrics(answer_texts: Sequence[str], labels: Sequence[str]) -> PopeMetrics:
    """Metrics of one split: answers and labels paired positionally (zip), yes-ratio over all answers."""
    preds = [0 if parse_pope_answer(t) == "no" else 1 for t in answer_texts]
    gold = [0 if label == "no" else 1 for label in labels]
    tp = fp = tn = fn = 0
    for pred, label in zip(preds, gold):
        if pred == 1 and label == 1:
            tp += 1
        elif pred == 1 and label == 0:
            fp += 1
        elif pred == 0 and label == 0:
            tn += 1
        else:
            fn += 1
    precision = _ratio(float(tp), float(tp + fp))
    recall = _ratio(float(tp), float(tp + fn))
    f1 = _ratio(2 * precision * recall, precision + recall)
    accuracy = _ratio(tp + tn, tp + tn + fp + fn)
    yes_ratio = _ratio(preds.count(1), len(preds))
    return PopeMetrics(tp, fp, tn, fn, accuracy, precision, recall, f1, yes_ratio)


def print_pope_metrics(m: PopeMetrics) -> None:
    """Print the original's block of lines for one split."""
    print("TP\tFP\tTN\tFN\t")
    print("{}\t{}\t{}\t{}".format(m.tp, m.fp, m.tn, m.fn))
    print("Accuracy: {}".format(m.accuracy))
    print("Precision: {}".format(m.precision))
    print("Recall: {}".format(m.recall))
    print("F1 score: {}".format(m.f1))
    print("Yes ratio: {}".format(m.yes_ratio))
    print("%.3f, %.3f, %.3f, %.3f, %.3f" % (m.f1, m.accuracy, m.precision, m.recall, m.yes_ratio))


def evaluate_pope(annotation_dir: str, question_file: str, result_file: str) -> dict[str, PopeMetrics]:
    """Score every `coco_pope_<category>.json` of `annotation_dir`; prints as the original, returns metrics."""
    require_dir(annotation_dir, "--annotation-dir")
    questions = {q["question_id"]: q for q in read_jsonl(question_file, ("question_id", "category"), "question file")}
    answers = read_jsonl(result_file, ("question_id", "text"), "answers file")
    for lineno, answer in enumerate(answers, start=1):
        if answer["question_id"] not in questions:
            raise UserError(
                f"answers file {result_file}, record {lineno}: question_id {answer['question_id']!r} "
                f"is not in the question file {question_file}"
            )
    files = sorted(f for f in os.listdir(annotation_dir) if f.startswith("coco_pope_") and f.endswith(".json"))
    if not files:
        raise UserError(f"--annotation-dir {annotation_dir} has no coco_pope_<category>.json files")
    results = {}
    for name in files:
        category = name[len("coco_pope_"):-len(".json")]
        label_path = os.path.join(annotation_dir, name)
        labels = [rec["label"] for rec in read_jsonl(label_path, ("label",), "POPE annotation file")]
        cur = [a["text"] for a in answers if questions[a["question_id"]]["category"] == category]
        print("Category: {}, # samples: {}".format(category, len(cur)))
        metrics = compute_pope_metrics(cur, labels)
        print_pope_metrics(metrics)
        print("====================================")
        results[category] = metrics
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mgm.eval.eval_pope", description="Score POPE yes/no answers.")
    parser.add_argument("--annotation-dir", required=True, help="directory of coco_pope_<category>.json label files")
    parser.add_argument("--question-file", required=True, help="question JSONL with question_id and category")
    parser.add_argument("--result-file", required=True, help="answers JSONL {question_id, text}")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    evaluate_pope(args.annotation_dir, args.question_file, args.result_file)


if __name__ == "__main__":
    main()
