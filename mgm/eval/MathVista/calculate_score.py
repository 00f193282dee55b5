"""MathVista step 2: normalise the extracted answers, judge them and write the score file.

Run from the repository root (original flags):

    python mgm/eval/MathVista/calculate_score.py --output_file answers/MGM-7B/merge.jsonl \\
        --score_file answers/MGM-7B/score.jsonl --gt_file data/MGM-Eval/MathVista/testmini.json \\
        [--number -1] [--rerun] [--caculate_gain --random_file score_random_guess.json] [--output_dir DIR]

Reads the extraction results (JSON dict from extract_answer.py, or JSONL), sets `prediction` and
`true_false` on each problem (answers missing from the results are taken from --gt_file) and, when
something changed, writes the results back as a JSON dict (raw JSONL is first copied to `.bak`).
Prints `Correct: C, Total: N, Accuracy: xx.xx%` and one `[value]: acc% (c/t)` line per metadata value,
and writes the scores as JSON (format: mgm.eval.mathvista_utils). With --output_dir, the three file
names are taken relative to it (the upstream MathVista layout).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make the repository root importable without an install.
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from mgm.errors import UserError, exit_on_user_error  # noqa: E402
from mgm.eval.mathvista_utils import (  # noqa: E402
    add_gains,
    compute_scores,
    load_results,
    save_results,
    score_predictions,
)
from mgm.eval.scorer_io import load_json, save_json  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="calculate_score.py", description="Score MathVista extractions "
                                "(overall and per question type, answer type, language, source, category, "
                                "task, context, grade and skill).")
    p.add_argument("--output_dir", default=None, help="optional directory the file names below are relative to")
    p.add_argument("--output_file", default="output.json", help="results with `extraction` (JSON dict or JSONL)")
    p.add_argument("--score_file", default="scores.json", help="where to write the scores (JSON)")
    p.add_argument("--gt_file", default="../data/testmini.json", help="MathVista testmini.json (for missing answers)")
    p.add_argument("--number", type=int, default=-1, help="only the first N problems (-1: all)")
    p.add_argument("--rerun", action="store_true", help="recompute prediction/true_false")
    p.add_argument("--caculate_gain", action="store_true", help="add the gains over a random-guess score file")
    p.add_argument("--random_file", default="score_random_guess.json", help="score file of random guessing")
    return p


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)

    def at(name: str) -> str:
        return os.path.join(args.output_dir, name) if args.output_dir else name

    output_file, scores_file = at(args.output_file), at(args.score_file)
    print(f"Reading {output_file}...")
    results = load_results(output_file)
    gts = None
    if os.path.exists(args.gt_file):
        print(f"Reading {args.gt_file}...")
        gts = load_json(args.gt_file, "--gt_file")
        if not isinstance(gts, dict):
            raise UserError(f"--gt_file {args.gt_file}: expected MathVista testmini.json ({{pid: problem}})")
    full_pids, changed = score_predictions(results, gts, args.number, args.rerun, where=output_file)
    if changed:
        print("\n!!!Some problems are updated.!!!")
        print(f"\nSaving {output_file}...")
        save_results(output_file, results, set())

    scores = compute_scores(results, full_pids)
    print(f"\nSaving {scores_file}...")
    save_json(scores_file, scores)
    print("\nDone!")

    if args.caculate_gain:
        random_file = at(args.random_file)
        random_scores = load_json(random_file, "--random_file")
        print("\nCalculating the score gains...")
        add_gains(scores, random_scores, random_file)
        print(f"\nSaving {scores_file}...")
        save_json(scores_file, scores)
        print("\nDone!")
    return scores


if __name__ == "__main__":
    main()
