"""Score SEED-Bench answers by question type and write the JSONL for the leaderboard upload.

Run as `python -m mgm.eval.converters.seed` or, from a repository checkout, with the original
script name and flags:

    python scripts/convert_seed_for_submission.py --annotation-file data/seed_bench/SEED-Bench.json \\
        --result-file answers/seed/CKPT/merge.jsonl --result-upload-file answers_upload/seed/CKPT.jsonl

Accuracy is exact match of the answer `text` with the question's `answer` letter. Prints one
`<question type>: xx.xx%` line per type (sorted by type id), `Total accuracy: xx.xx%`, then
`image accuracy: ...` and `video accuracy: ...`; a question without an answer counts wrong. The upload
file has one `{"question_id", "prediction"}` line per annotated question.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence

from mgm.errors import UserError, exit_on_user_error
from mgm.eval.scorer_io import atomic_write_text, check_keys, load_json, read_jsonl


def _lookup_id(question_id):
    # The original converts annotation ids to int when possible (answers carry int ids).
    try:
        return int(question_id)
    except (TypeError, ValueError):
        return question_id


def eval_single(data: Mapping, results: Mapping, eval_only_type: str | None = None) -> float | None:
    """Print the per-type lines (all types) or the one `<type> accuracy` line; return the total in %."""
    names = {type_id: name for name, type_id in data["question_type"].items()}
    type_counts: dict = {}
    correct_counts: dict = {}
    for question in data["questions"]:
        if eval_only_type is not None and question["data_type"] != eval_only_type:
            continue
        data_type = question["question_type_id"]
        type_counts[data_type] = type_counts.get(data_type, 0) + 1
        row = results.get(_lookup_id(question["question_id"]))
        if row is not None and row["text"] == question["answer"]:
            correct_counts[data_type] = correct_counts.get(data_type, 0) + 1
    total_count = total_correct = 0
    for data_type in sorted(type_counts):
        accuracy = correct_counts.get(data_type, 0) / type_counts[data_type] * 100
        if eval_only_type is None:
            print(f"{names.get(data_type, data_type)}: {accuracy:.2f}%")
        total_count += type_counts[data_type]
        total_correct += correct_counts.get(data_type, 0)
    label = "Total" if eval_only_type is None else eval_only_type
    if total_count == 0:
        print(f"{label} accuracy: n/a (no questions)")
        return None
    total_accuracy = total_correct / total_count * 100
    print(f"{label} accuracy: {total_accuracy:.2f}%")
    return total_accuracy


def upload_lines(data: Mapping, results: Mapping) -> list[str]:
    """One JSON line `{"question_id", "prediction"}` per annotated question."""
    lines = []
    for question in data["questions"]:
        qid = question["question_id"]
        row = results.get(qid, results.get(_lookup_id(qid)))
        if row is None:
            raise UserError(f"no answer for SEED question_id {qid!r}; the upload needs every question")
        lines.append(json.dumps({"question_id": qid, "prediction": row["text"]}))
    return lines


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="convert_seed_for_submission.py",
                                description="SEED-Bench accuracy per question type + upload JSONL.")
    p.add_argument("--annotation-file", required=True, help="SEED-Bench.json")
    p.add_argument("--result-file", required=True, help="answers JSONL {question_id, text}")
    p.add_argument("--result-upload-file", required=True, help="upload JSONL to write")
    args = p.parse_args(argv)
    data = load_json(args.annotation_file, "--annotation-file")
    if not isinstance(data, dict):
        raise UserError(f"--annotation-file {args.annotation_file}: expected SEED-Bench.json "
                        "({'questions': [...], 'question_type': {...}})")
    check_keys(data, ("questions", "question_type"), f"--annotation-file {args.annotation_file}")
    for i, question in enumerate(data["questions"]):
        check_keys(question, ("question_id", "question_type_id", "data_type", "answer"),
                   f"--annotation-file {args.annotation_file}, questions[{i}]")
    results = {rec["question_id"]: rec for rec in read_jsonl(args.result_file, ("question_id", "text"))}
    scores = {"total": eval_single(data, results)}
    for data_type in ("image", "video"):
        scores[data_type] = eval_single(data, results, data_type)
    atomic_write_text(args.result_upload_file, "".join(line + "\n" for line in upload_lines(data, results)))
    return scores


if __name__ == "__main__":
    main()
