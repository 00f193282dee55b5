"""Convert MM-Vet answers to the `{"v1_<question_id>": answer}` JSON of the official GPT-4 grader.

Run as `python -m mgm.eval.converters.mmvet` or, from a repository checkout, with the original
script name and flags:

    python scripts/convert_mmvet_for_eval.py --src data/MGM-Eval/mm-vet/answers/CKPT/merge.jsonl \\
        --dst data/MGM-Eval/mm-vet/results/CKPT/CKPT.json

`--src` is the runner JSONL `{question_id, text}`; parent directories of `--dst` are created.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from mgm.errors import exit_on_user_error
from mgm.eval.scorer_io import atomic_write_text, read_jsonl


def convert(src: str, dst: str) -> dict[str, str]:
    """Write and return `{f"v1_{question_id}": text}` in answers-file order."""
    result = {f"v1_{rec['question_id']}": rec["text"] for rec in read_jsonl(src, ("question_id", "text"), "--src")}
    atomic_write_text(dst, json.dumps(result, indent=2))
    return result


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(prog="convert_mmvet_for_eval.py", description="MM-Vet answers -> grader JSON.")
    p.add_argument("--src", required=True, help="answers JSONL {question_id, text}")
    p.add_argument("--dst", required=True, help="output JSON for the MM-Vet grader")
    args = p.parse_args(argv)
    return convert(args.src, args.dst)


if __name__ == "__main__":
    main()
