"""Convert GQA answers to the prediction list of the official GQA evaluation script.

Run as `python -m mgm.eval.converters.gqa` or, from a repository checkout, with the original
script name and flags:

    python scripts/convert_gqa_for_eval.py --src answers/gqa/CKPT/merge.jsonl --dst data/gqa/testdev_balanced_predictions.json

Each answer `{question_id, text}` becomes `{"questionId": question_id, "prediction": text.rstrip('.').lower()}`.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from mgm.errors import exit_on_user_error
from mgm.eval.scorer_io import atomic_write_text, read_jsonl


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
