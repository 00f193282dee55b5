"""Score SEED-Bench answers by question type and write the JSONL for the leaderboard upload.

Kept under its original name and flags; the converter is `mgm.eval.converters.seed` (installed with
the package, so `python -m mgm.eval.converters.seed` works without this checkout).
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: repo root importable

from mgm.eval.converters.seed import main  # noqa: E402

if __name__ == "__main__":
    main()
