"""Judge MMMU runner output (upstream `eval.py` of the Mini-Gemini kit).

Run from the repository root:

    python mgm/eval/MMMU/eval/eval.py --result_file work_dirs/MMMU/answers/CKPT/merge.jsonl \\
        --output_path work_dirs/MMMU/CKPT/val.json

Reads the runner JSONL `{id, question_type, answer, parsed_pred, ...}`, writes `{id: "Correct"|"Wrong",
..., "metric_dict": {"acc", "num_example"}}` and prints the metric dict.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make the repository root importable without an install.
    sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from mgm.errors import exit_on_user_error  # noqa: E402
from mgm.eval.mmmu_utils import eval_result_file  # noqa: E402


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict:
    return eval_result_file(argv)


if __name__ == "__main__":
    main()
