"""MME scorer: LLaVA's `convert_answer_to_mme.py` + the MME kit's `calculation.py` in one command.

Run:

    python -m mgm.eval.eval_mme --answers-file data/MGM-Eval/MME/answers/MGM-7B-HD.jsonl \\
        --mme-root data/MGM-Eval/MME/MME_Benchmark_release_version [--results-dir DIR] [--json]
    python -m mgm.eval.eval_mme --results-dir DIR [--json]     # only score existing <category>.txt files

Step 1 (convert, when --answers-file is given). The answers JSONL comes from
`mgm.eval.model_vqa_loader` on LLaVA's `llava_mme.jsonl`: records `{question_id, prompt, text}` where
`question_id` is the image path relative to MME_Benchmark_release_version ("artwork/10002.jpg" or
"artwork/images/10002.jpg"): its first component is the category and its file name, up to the first
".", + ".txt" names the question file. The prompt loses "Answer the question using a single word or
phrase." (then stripped); if it lacks "Please answer yes or no." that sentence is appended after one
space (two spaces when only that form exists in the ground truth). The ground truth is looked up by
(category, question file, question) and one line `txt_name\\tquestion\\tGT\\tprediction` is written per
answer to `<results-dir>/<category>.txt`, in answers-file order. Tabs and line breaks inside a
prediction become spaces (the original wrote them raw and then crashed while scoring).

Expected --mme-root layout (the MME_Benchmark_release_version tree; its parent is accepted too):

    <root>/<category>/images/*.jpg|png  +  <root>/<category>/questions_answers_YN/<image-stem>.txt
        (artwork, celebrity, landmark, posters, scene)
    <root>/<category>/*.jpg|png  +  <root>/<category>/<image-stem>.txt side by side
        (existence, count, position, color, OCR, commonsense_reasoning, numerical_calculation,
         text_translation, code_reasoning)

Each question file has two lines `question<TAB>Yes|No`, one per question about that image.

Step 2 (calculation). Each `<category>.txt` is read as consecutive PAIRS of lines (one image = two
questions, as the official kit assumes). A prediction is lowercased; "yes"/"no" are kept, otherwise
its first 4 characters decide: containing "yes" -> yes, else containing "no" -> no, else "other".
acc = correct questions / questions, acc_plus = images with both questions right / images, and the
category score = acc * 100 + acc_plus * 100 (summed in that order, as the kit does). Perception =
existence, count, position, color, posters, celebrity, scene, landmark, artwork, OCR; Cognition =
commonsense_reasoning, numerical_calculation, text_translation, code_reasoning. Categories without a
result file are skipped with a note on stderr. Output: the kit's lines

    =========== Perception ===========
    total score: 1234.5
    <blank>
    \\t existence  score: 190.0
    ...

or, with --json, `{"Perception": {"tasks": {name: score}, "total": x}, "Cognition": {...}}`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence

from mgm.errors import UserError, exit_on_user_error
from mgm.eval.scorer_io import read_jsonl, require_dir, require_file

EVAL_TYPE_DICT: dict[str, tuple[str, ...]] = {
    "Perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                   "artwork", "OCR"),
    "Cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}

_SINGLE_WORD = "Answer the question using a single word or phrase."
_YES_NO = "Please answer yes or no."

GroundTruth = dict[tuple[str, str, str], str]


def resolve_mme_root(path: str) -> str:
    """Accept MME_Benchmark_release_version itself or a directory containing it."""
    require_dir(path, "--mme-root")
    nested = os.path.join(path, "MME_Benchmark_release_version")
    return nested if os.path.isdir(nested) else path


def load_mme_ground_truth(mme_root: str) -> GroundTruth:
    """Read every category's question files into `{(category, txt_name, question): answer}`."""
    root = resolve_mme_root(mme_root)
    gt: GroundTruth = {}
    for category in sorted(os.listdir(root)):
        category_dir = os.path.join(root, category)
        if not os.path.isdir(category_dir):
            continue
        if os.path.exists(os.path.join(category_dir, "images")):
            qa_dir = os.path.join(category_dir, "questions_answers_YN")
            if not os.path.isdir(qa_dir):
                raise UserError(f"MME category {category_dir} has images/ but no questions_answers_YN/ directory")
        else:
            qa_dir = category_dir
        for name in sorted(os.listdir(qa_dir)):
            if not name.endswith(".txt"):
                continue
            path = os.path.join(qa_dir, name)
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    fields = line.strip().split("\t")
                    if len(fields) != 2:
                        raise UserError(f"MME question file {path}, line {lineno}: expected 'question<TAB>answer'")
                    gt[(category, name, fields[0])] = fields[1]
    if not gt:
        raise UserError(f"--mme-root {mme_root}: no MME question files found (expected <category>/*.txt or "
                        "<category>/questions_answers_YN/*.txt)")
    return gt


def _one_line(text: str) -> str:
    # A tab or line break inside a prediction would break the tab-separated, line-paired files.
    return text.replace("\r", " ").replace("\n", " ").replace("\t", " ")


def convert_answers_to_mme(
    answers: Iterable[dict], gt: GroundTruth, where: str = "answers file"
) -> dict[str, list[tuple[str, str, str, str]]]:
    """Group answers by category as `(txt_name, question, gt_answer, prediction)` rows (step 1)."""
    results: dict[str, list[tuple[str, str, str, str]]] = {}
    for index, answer in enumerate(answers, start=1):
        qid = str(answer["question_id"])
        category = qid.split("/")[0]
        txt_name = qid.split("/")[-1].split(".")[0] + ".txt"
        prompt = answer["prompt"]
        if _SINGLE_WORD in prompt:
            prompt = prompt.replace(_SINGLE_WORD, "").strip()
        if _YES_NO not in prompt:
            prompt = prompt + " " + _YES_NO
            if (category, txt_name, prompt) not in gt:
                prompt = prompt.replace(" " + _YES_NO, "  " + _YES_NO)
        key = (category, txt_name, prompt)
        if key not in gt:
            raise UserError(f"{where}, record {index}: no MME ground truth for category {category!r}, "
                            f"question file {txt_name!r}, question {prompt!r}; "
                            "wrong --mme-root or not an MME answers file?")
        results.setdefault(category, []).append((txt_name, prompt, gt[key], _one_line(str(answer["text"]))))
    return results


def write_mme_results(results: dict[str, list[tuple[str, str, str, str]]], results_dir: str) -> None:
    """Write one `<category>.txt` per category (tab-separated, one line per answer).

    Category files left in `results_dir` by an earlier conversion are removed first, so a stale file
    of another run is never scored with this one.
    """
    os.makedirs(results_dir, exist_ok=True)
    for tasks in EVAL_TYPE_DICT.values():
        for task in tasks:
            stale = os.path.join(results_dir, task + ".txt")
            if os.path.exists(stale) and task not in results:
                os.unlink(stale)
    for category, rows in results.items():
        with open(os.path.join(results_dir, f"{category}.txt"), "w", encoding="utf-8") as fp:
            for row in rows:
                fp.write("\t".join(row) + "\n")


def parse_pred_ans(pred_ans: str) -> str:
    """Official MME rule: "yes"/"no" as is, else look for "yes" then "no" in the first 4 characters."""
    if pred_ans in ("yes", "no"):
        return pred_ans
    prefix = pred_ans[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def score_category_lines(lines: Sequence[str], where: str) -> dict[str, float]:
    """acc, acc_plus and score of one category from its result lines (consecutive pairs = one image)."""
    if len(lines) % 2:
        raise UserError(f"{where}: {len(lines)} lines; MME needs two questions per image (an even count)")
    if not lines:
        raise UserError(f"{where}: empty result file")
    correct = 0
    images_both_right = 0
    other = 0
    for start in range(0, len(lines), 2):
        names = []
        img_correct = 0
        for offset, line in enumerate(lines[start:start + 2]):
            fields = line.split("\t")
            if len(fields) != 4:
                raise UserError(f"{where}, line {start + offset + 1}: expected 4 tab-separated fields "
                                "(image, question, GT, prediction)")
            img_name, _question, gt_ans, pred_ans = fields
            names.append(img_name)
            gt_ans = gt_ans.lower()
            if gt_ans not in ("yes", "no"):
                raise UserError(f"{where}, line {start + offset + 1}: ground truth must be yes/no, got {gt_ans!r}")
            # The official kit keeps the line's trailing newline in the prediction; it cannot change the
            # outcome (it is beyond the 4-character prefix or adds no letters), so it is kept as read.
            pred = parse_pred_ans(pred_ans.lower())
            if pred == gt_ans:
                img_correct += 1
                correct += 1
            if pred not in ("yes", "no"):
                other += 1
        if names[0] != names[1]:
            print(f"warning: {where}: lines {start + 1}-{start + 2} pair different images "
                  f"({names[0]}, {names[1]}); scored as one image like the official kit", file=sys.stderr)
        if img_correct == 2:
            images_both_right += 1
    acc = correct / len(lines)
    acc_plus = images_both_right / (len(lines) // 2)
    score = 0
    score += acc * 100
    score += acc_plus * 100
    return {"acc": acc, "acc_plus": acc_plus, "score": score, "other_num": other}


def calculate_mme_scores(results_dir: str) -> dict[str, dict]:
    """Scores of every category file in `results_dir`: `{eval_type: {"tasks": {name: score}, "total": x}}`."""
    require_dir(results_dir, "--results-dir")
    all_tasks = [task for tasks in EVAL_TYPE_DICT.values() for task in tasks]
    missing = [task for task in all_tasks if not os.path.exists(os.path.join(results_dir, task + ".txt"))]
    if len(missing) == len(all_tasks):
        raise UserError(f"--results-dir {results_dir} has no MME <category>.txt result files")
    if missing:
        print(f"note: no results in {results_dir} for MME categories {', '.join(missing)}; skipped", file=sys.stderr)
    scores: dict[str, dict] = {}
    for eval_type, tasks in EVAL_TYPE_DICT.items():
        total = 0
        task_scores = {}
        for task in tasks:
            if task in missing:
                continue
            path = os.path.join(results_dir, task + ".txt")
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
            task_scores[task] = score_category_lines(lines, f"MME result file {path}")["score"]
            total += task_scores[task]
        scores[eval_type] = {"tasks": task_scores, "total": total}
    return scores


def print_mme_scores(scores: dict[str, dict]) -> None:
    """Print the official kit's report lines."""
    for eval_type, block in scores.items():
        print("===========", eval_type, "===========")
        print("total score:", block["total"], "\n")
        for task, score in block["tasks"].items():
            print("\t", task, " score:", score)
        print("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mgm.eval.eval_mme",
        description="Convert MME answers to the MME kit's per-category files and compute perception/cognition scores.",
        epilog="Layout of --mme-root and the scoring rules: python -m pydoc mgm.eval.eval_mme",
    )
    parser.add_argument("--answers-file", help="answers JSONL {question_id: '<category>/<image>', prompt, text}")
    parser.add_argument("--mme-root", help="MME_Benchmark_release_version directory (or its parent)")
    parser.add_argument("--results-dir", "--results_dir", dest="results_dir", help="where the <category>.txt files go / are read "
                        "(default with --answers-file: <answers-file stem>_mme next to it)")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON instead of the kit's table")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    args = build_parser().parse_args(argv)
    if args.answers_file is None and args.results_dir is None:
        raise UserError("give --answers-file FILE --mme-root DIR (convert + score) or --results-dir DIR (score only)")
    results_dir = args.results_dir
    if args.answers_file is not None:
        require_file(args.answers_file, "--answers-file")
        if args.mme_root is None:
            raise UserError("--answers-file needs --mme-root (the MME_Benchmark_release_version directory)")
        if results_dir is None:
            stem = os.path.splitext(os.path.basename(args.answers_file))[0]
            results_dir = os.path.join(os.path.dirname(args.answers_file), stem + "_mme")
        gt = load_mme_ground_truth(args.mme_root)
        answers = read_jsonl(args.answers_file, ("question_id", "prompt", "text"))
        write_mme_results(convert_answers_to_mme(answers, gt, f"answers file {args.answers_file}"), results_dir)
    scores = calculate_mme_scores(results_dir)
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        print_mme_scores(scores)
    return scores


if __name__ == "__main__":
    main()
