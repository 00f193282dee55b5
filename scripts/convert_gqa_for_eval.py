"""Convert GQA answers to the prediction list of the official GQA evaluation script.

Run from the repository root (original flags):

    python scripts/convert_gqa_for_eval.py --src answers/gqa/CKPT/merge.jsonl --dst data/gqa/testdev_balanced_predictions.json

Each answer `{question_id, text}` becomes `{"questionId": question_id, "prediction": text.rstrip('.').lower()}`.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: repo root importable

from mgm.errors import exit_on_user_error  # noqa: E402
from mgm.eval.scorer_io import atomic_write_text, read_jsonl  # noqa: E402


def convert(src: str, dst: str) -> list[dict]:
    """Write and return the GQA prediction list."""
    answers = [{"questionId": rec["question_id"], "prediction": rec["text"].rstrip(".").lower()}
               for rec in read_jsonl(src, ("question_id", "text"), "--src")]
    atomic_write_text(dst, json.dumps(answers))
    return answers


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="convert_gqa_for_eval.py", description="GQA answers -> GQA prediction JSON.")
    p.add_argument("--src", required=True, help="answers JSONL {question_id, text}")
    p.add_argument("--dst", required=True, help="output predictions JSON")
    args = p.parse_args(argv)
    return convert(args.src, args.dst)


if __name__ == "__main__":
    main()
