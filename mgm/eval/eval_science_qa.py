"""ScienceQA scorer: option-letter accuracy of an answers JSONL on a ScienceQA split.

Run (same flags as the original):

    python -m mgm.eval.eval_science_qa --base-dir data/scienceqa --result-file answers/MGM-7B.jsonl \\
        --output-file answers/MGM-7B_output.json --output-result answers/MGM-7B_result.json --split test

`--base-dir` holds `pid_splits.json` (`{split: [pid, ...]}`) and `problems.json`
(`{pid: {choices: [...], answer: index, ...}}`). Answers are JSONL `{question_id (= pid), prompt, text}`
from `mgm.eval.model_vqa_science`; a pid without an answer counts as "FAILED".

Parsing of `text` (original rule): the whole text is one of A-E; or it starts with "X. " where X is
one of A-E; or the regex `The answer is ([A-Z]).` matches exactly once (its letter is taken);
otherwise "FAILED". A letter outside the problem's choices, or FAILED, gives index -1 (wrong).
Prints `Total: N, Correct: C, Accuracy: xx.xx%, IMG-Accuracy: yy.yy%` (IMG = prompts containing
"<image>"); writes `--output-file` = `{"correct": [...], "incorrect": [...]}` analyses and
`--output-result` = `{acc, correct, count, results: {pid: index}, outputs: {pid: text}}`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence

from mgm.errors import UserError, exit_on_user_error
from mgm.eval.scorer_io import atomic_write_text, check_keys, load_json, read_jsonl, require_dir

OPTIONS = ("A", "B", "C", "D", "E")
# '.' is "any character" here, as in the original pattern.
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_science_answer(pred_text: str, options: Sequence[str] = OPTIONS) -> str:
    """Return the chosen letter, or "FAILED" (rules in the module docstring)."""
    if pred_text in options:
        return pred_text
    if len(pred_text) >= 3 and pred_text[0] in options and pred_text[1:3] == ". ":
        return pred_text[0]
    hits = _ANSWER_IS.findall(pred_text)
    if len(hits) == 1:
        return hits[0]
    return "FAILED"


def get_pred_idx(prediction: str, choices: Sequence, options: Sequence[str] = OPTIONS) -> int:
    """Index of letter `prediction` among the problem's choices, or -1."""
    if prediction in options[: len(choices)]:
        return list(options).index(prediction)
    return -1


def evaluate_science_qa(base_dir: str, result_file: str, split: str = "test") -> tuple[dict, dict]:
    """Score one answers file; returns `(analyses {correct, incorrect}, sqa_results)` as the original."""
    require_dir(base_dir, "--base-dir")
    splits = load_json(os.path.join(base_dir, "pid_splits.json"), "ScienceQA split file")
    if split not in splits:
        raise UserError(f"--split {split!r} is not in {os.path.join(base_dir, 'pid_splits.json')} "
                        f"(available: {', '.join(sorted(splits))})")
    problems = load_json(os.path.join(base_dir, "problems.json"), "ScienceQA problems file")
    predictions = {p["question_id"]: p for p in read_jsonl(result_file, ("question_id", "text", "prompt"))}

    results: dict[str, list] = {"correct": [], "incorrect": []}
    sqa_results: dict = {"acc": None, "correct": None, "count": None, "results": {}, "outputs": {}}
    for prob_id in splits[split]:
        if prob_id not in problems:
            raise UserError(f"pid {prob_id!r} of split {split!r} is missing from {base_dir}/problems.json")
        prob = problems[prob_id]
        check_keys(prob, ("choices", "answer"), f"{base_dir}/problems.json, pid {prob_id!r}")
        if prob_id not in predictions:
            pred = {"text": "FAILED", "prompt": "Unknown"}
        else:
            pred = predictions[prob_id]
        pred_text = pred["text"]
        answer = parse_science_answer(pred_text)
        pred_idx = get_pred_idx(answer, prob["choices"])
        analysis = {
            "question_id": prob_id,
            "parsed_ans": answer,
            "ground_truth": OPTIONS[prob["answer"]],
            "question": pred["prompt"],
            "pred": pred_text,
            "is_multimodal": "<image>" in pred["prompt"],
        }
        sqa_results["results"][prob_id] = pred_idx
        sqa_results["outputs"][prob_id] = pred_text
        results["correct" if pred_idx == prob["answer"] else "incorrect"].append(analysis)

    correct = len(results["correct"])
    total = correct + len(results["incorrect"])
    if total == 0:
        raise UserError(f"split {split!r} of {base_dir}/pid_splits.json is empty")
    mm_correct = sum(1 for x in results["correct"] if x["is_multimodal"])
    mm_total = mm_correct + sum(1 for x in results["incorrect"] if x["is_multimodal"])
    img_acc = mm_correct / mm_total * 100 if mm_total else 0.0
    print(f"Total: {total}, Correct: {correct}, Accuracy: {correct / total * 100:.2f}%, IMG-Accuracy: {img_acc:.2f}%")
    sqa_results["acc"] = correct / total * 100
    sqa_results["correct"] = correct
    sqa_results["count"] = total
    return results, sqa_results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mgm.eval.eval_science_qa", description="Score ScienceQA answers.")
    parser.add_argument("--base-dir", required=True, help="directory with pid_splits.json and problems.json")
    parser.add_argument("--result-file", required=True, help="answers JSONL {question_id, prompt, text}")
    parser.add_argument("--output-file", required=True, help="where to write the per-question analyses (JSON)")
    parser.add_argument("--output-result", required=True, help="where to write {acc, correct, count, results, outputs}")
    parser.add_argument("--split", default="test", help="split of pid_splits.json to score (default: test)")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    results, sqa_results = evaluate_science_qa(args.base_dir, args.result_file, args.split)
    atomic_write_text(args.output_file, json.dumps(results, indent=2))
    atomic_write_text(args.output_result, json.dumps(sqa_results, indent=2))


if __name__ == "__main__":
    main()
