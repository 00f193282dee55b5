"""Convert MMMU runner output to the test-server submission (upstream `convert_to_test.py`).

Run from the repository root:

    python mgm/eval/MMMU/eval/convert_to_test.py --result_file merge.jsonl --output_path work_dirs/MMMU/CKPT/test.json

Writes `{id: prediction}`: the letter for multiple choice, `str(first parsed item)` for open questions.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make the repository root importable without an install.
    sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from mgm.errors import exit_on_user_error  # noqa: E402
from mgm.eval.mmmu_utils import convert_to_test  # noqa: E402


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict:
    return convert_to_test(argv)


if __name__ == "__main__":
    main()
