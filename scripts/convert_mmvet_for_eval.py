"""Convert MM-Vet answers to the `{"v1_<question_id>": answer}` JSON of the official GPT-4 grader.

Kept under its original name and flags; the converter is `mgm.eval.converters.mmvet` (installed with
the package, so `python -m mgm.eval.converters.mmvet` works without this checkout).
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: repo root importable

from mgm.eval.converters.mmvet import main  # noqa: E402

if __name__ == "__main__":
    main()
