"""Score MMMU parsed predictions per subject and discipline (upstream `main_eval_only.py`).

Run from the repository root:

    python mgm/eval/MMMU/eval/main_eval_only.py --output_path val_output.json --answer_path answer_dict_val.json

`--output_path` is a JSON `{id: prediction}` (letters for multiple choice, text for open questions);
`--answer_path` the MMMU `answer_dict_val.json` `{id: {question_type, ground_truth}}`. Prints
`Evaluating: <subject>` lines and then the dict of `{"num", "acc"}` per discipline, subject and overall.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make the repository root importable without an install.
    sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from mgm.errors import exit_on_user_error  # noqa: E402
from mgm.eval.mmmu_utils import main_eval_only  # noqa: E402


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict:
    return main_eval_only(argv)


if __name__ == "__main__":
    main()
