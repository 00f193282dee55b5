"""TextVQA scorer: soft VQA accuracy of an answers JSONL against `TextVQA_0.5.1_val.json`.

Run (same flags as the original `mgm.eval.eval_textvqa`):

    python -m mgm.eval.eval_textvqa --annotation-file data/MGM-Eval/textvqa/TextVQA_0.5.1_val.json \\
        --result-file work_dirs/textvqa/answers/MGM-7B/merge.jsonl      # or --result-dir DIR

For each result file it prints the file's stem, then `Samples: N` and `Accuracy: xx.xx%` and a blank
line, exactly like the original. With `--result-dir` every `*.jsonl` in the directory is scored in
sorted order and other files are reported as `Skipping NAME`.

Answers are JSONL records `{question_id (= the TextVQA image_id), prompt, text}` as written by
`mgm.eval.model_vqa_loader`. The question is recovered from the stored prompt to find the
annotation keyed by `(image_id, question.lower())`:
* prompt starting with "OCR tokens: " -> the text between "Question: " and " Short answer:";
* prompt containing "Reference OCR token: " with exactly 3 lines -> line 2 if the prompt starts with
  "Reference OCR token:", else line 1;
* any other 2-line prompt -> line 1 (the LLaVA prompt "question\\nAnswer the question using ...").
"""
from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence

from mgm.errors import UserError, exit_on_user_error
from mgm.eval.m4c_evaluator import TextVQAAccuracyEvaluator
from mgm.eval.scorer_io import check_keys, load_json, read_jsonl, require_dir

_OCR_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def prompt_processor(prompt: str) -> str:
    """Recover the lowercased question from a stored prompt (rules in the module docstring).

    Raises:
        ValueError: the prompt matches none of the known layouts.
    """
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_QUESTION.search(prompt)
        if match is None:
            raise ValueError("prompt starts with 'OCR tokens: ' but has no 'Question: ... Short answer:'")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(
            f"cannot recover the question from a {len(lines)}-line prompt; expected 'OCR tokens: ...', "
            "a 3-line prompt with 'Reference OCR token: ', or a 2-line prompt"
        )
    return question.lower()


def load_annotations(annotation_file: str) -> dict[tuple, dict]:
    """Load TextVQA annotations keyed by `(image_id, question.lower())`."""
    data = load_json(annotation_file, "annotation file")
    if not isinstance(data, dict) or "data" not in data:
        raise UserError(f"annotation file {annotation_file}: expected a TextVQA JSON with a top-level 'data' list")
    annotations = {}
    for index, ann in enumerate(data["data"]):
        check_keys(ann, ("image_id", "question", "answers"), f"annotation file {annotation_file}, data[{index}]")
        annotations[(ann["image_id"], ann["question"].lower())] = ann
    return annotations


def score_result_file(annotations: dict[tuple, dict], result_file: str) -> tuple[int, float]:
    """Return `(number of samples, accuracy in [0, 1])` of one answers JSONL."""
    results = read_jsonl(result_file, ("question_id", "prompt", "text"))
    pred_list = []
    lineno = 0
    for lineno, result in enumerate(results, start=1):
        try:
            question = prompt_processor(result["prompt"])
        except ValueError as exc:
            raise UserError(f"answers file {result_file}, record {lineno}: {exc}") from None
        key = (result["question_id"], question)
        if key not in annotations:
            raise UserError(
                f"answers file {result_file}, record {lineno}: no annotation for image_id "
                f"{result['question_id']!r} with question {question!r}; wrong annotation file?"
            )
        gt_answers = annotations[key]["answers"]
        if len(gt_answers) != 10:
            raise UserError(f"annotation of image_id {key[0]!r}, question {key[1]!r} has {len(gt_answers)} answers; "
                            "the TextVQA soft accuracy needs exactly 10")
        pred_list.append({"pred_answer": result["text"], "gt_answers": gt_answers})
    if not pred_list:
        raise UserError(f"answers file {result_file} has no records")
    return len(pred_list), TextVQAAccuracyEvaluator().eval_pred_list(pred_list)


def eval_single(annotation_file: str, result_file: str, annotations: dict | None = None) -> float:
    """Score one answers file and print the original's three lines; returns the accuracy in [0, 1]."""
    experiment_name = os.path.splitext(os.path.basename(result_file))[0]
    if annotations is None:
        annotations = load_annotations(annotation_file)
    samples, accuracy = score_result_file(annotations, result_file)
    print(experiment_name)
    print("Samples: {}\nAccuracy: {:.2f}%\n".format(samples, 100.0 * accuracy))
    return accuracy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mgm.eval.eval_textvqa",
        description="Score TextVQA answers (m4c soft VQA accuracy over 10 human answers).",
    )
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")
    parser.add_argument("--result-file", help="answers JSONL {question_id, prompt, text}")
    parser.add_argument("--result-dir", help="directory: score every *.jsonl inside (sorted)")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.result_file is None and args.result_dir is None:
        raise UserError("give --result-file FILE or --result-dir DIR")
    annotations = load_annotations(args.annotation_file)
    if args.result_file is not None:
        eval_single(args.annotation_file, args.result_file, annotations)
    if args.result_dir is not None:
        require_dir(args.result_dir, "--result-dir")
        for name in sorted(os.listdir(args.result_dir)):
            if not name.endswith(".jsonl"):
                print(f"Skipping {name}")
                continue
            eval_single(args.annotation_file, os.path.join(args.result_dir, name), annotations)


if __name__ == "__main__":
    main()
