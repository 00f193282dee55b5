"""Convert MMBench answers to the Excel file the MMBench evaluation server expects.

Run as `python -m mgm.eval.converters.mmbench` or, from a repository checkout, with the original
script name and flags:

    python scripts/convert_mmbench_for_submission.py \\
        --annotation-file data/MGM-Eval/mmbench/mmbench_dev_20230712.tsv \\
        --result-dir data/MGM-Eval/mmbench/answers/mmbench_dev_20230712 \\
        --upload-dir data/MGM-Eval/mmbench/answers_upload/mmbench_dev_20230712 --experiment MGM/MGM-7B-HD

Reads `<result-dir>/<experiment>.jsonl` (records `{question_id (= TSV index), text}` from
`mgm.eval.model_vqa_mmbench`), drops the TSV columns hint, category, source, image, comment and
l2-category, inserts a `prediction` column at position 6 filled from the answers by `index ==
question_id` (a later answer for the same index wins), and writes `<upload-dir>/<experiment>.xlsx`
with openpyxl. Unlike the original, the sub-directories of `<experiment>` (e.g. "MGM/") are created.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mgm.errors import UserError, exit_on_user_error
from mgm.eval.scorer_io import ensure_parent_dir, read_jsonl, require_file

DROP_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convert_mmbench_for_submission.py",
                                description="Write MMBench predictions as the xlsx the official server scores.")
    p.add_argument("--annotation-file", required=True, help="MMBench TSV (e.g. mmbench_dev_20230712.tsv)")
    p.add_argument("--result-dir", required=True, help="directory holding <experiment>.jsonl")
    p.add_argument("--upload-dir", required=True, help="directory to write <experiment>.xlsx into")
    p.add_argument("--experiment", required=True, help="answers file stem; may contain '/' (sub-directories)")
    return p


def convert(annotation_file: str, result_file: str, upload_file: str):
    """Build the submission DataFrame from the TSV and the answers, write it, and return it."""
    import pandas as pd  # the eval extra; imported here so --help works without it

    require_file(annotation_file, "--annotation-file")
    try:
        df = pd.read_table(annotation_file)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"--annotation-file {annotation_file} is not a readable TSV: {exc}") from None
    if "index" not in df.columns:
        raise UserError(f"--annotation-file {annotation_file} has no 'index' column; is it an MMBench TSV?")
    answers = read_jsonl(result_file, ("question_id", "text"))
    cur_df = df.drop(columns=[c for c in DROP_COLUMNS if c in df.columns])
    cur_df.insert(min(6, len(cur_df.columns)), "prediction", None)
    cur_df["prediction"] = cur_df["prediction"].astype(object)
    unmatched = 0
    for pred in answers:
        mask = df["index"] == pred["question_id"]
        if not mask.any():
            unmatched += 1
            continue
        cur_df.loc[mask, "prediction"] = pred["text"]
    if unmatched:
        print(f"warning: {unmatched} answers have a question_id that is not an index of {annotation_file}",
              file=sys.stderr)
    missing = int(cur_df["prediction"].isna().sum())
    if missing:
        print(f"warning: {missing} of {len(cur_df)} questions have no prediction", file=sys.stderr)
    ensure_parent_dir(upload_file)
    cur_df.to_excel(upload_file, index=False, engine="openpyxl")
    return cur_df


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    result_file = os.path.join(args.result_dir, f"{args.experiment}.jsonl")
    upload_file = os.path.join(args.upload_dir, f"{args.experiment}.xlsx")
    convert(args.annotation_file, result_file, upload_file)
    print(f"Wrote {upload_file}")
    return upload_file


if __name__ == "__main__":
    main()
