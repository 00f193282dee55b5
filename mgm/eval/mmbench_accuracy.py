"""A local accuracy for MMBench answers, where the split's TSV carries the answers (the dev split).

The original leaves MMBench scoring to the official server: its script only writes the submission
.xlsx (`mgm.eval.converters.mmbench`), so `mgm eval mmbench` printed no number. When the TSV has an
`answer` column, this reads that same .xlsx back and prints the share of questions whose prediction
names the right option: the letter it starts with ("B", "(B) ...", "B. ..."), else an exact match of an
option's text. One prediction per question (the converter keeps the last round), so this is the
single-round score; the server's circular score, which needs every rotation right and a judge for
free-form answers, can be lower.
"""
from __future__ import annotations

import math
import re

OPTION_LETTERS = "ABCD"
_LEADING_LETTER = re.compile(r"^\(?([A-D])(?:\b|\))")


def option_letter(prediction: object, options: dict[str, str]) -> str | None:
    """The option a prediction names: its leading letter, else the option whose text it equals; None if neither."""
    missing = prediction is None or (isinstance(prediction, float) and math.isnan(prediction))
    text = "" if missing else str(prediction).strip()
    match = _LEADING_LETTER.match(text)
    if match:
        return match.group(1)
    for letter, option in options.items():
        if text.lower().rstrip(".") == option.lower():
            return letter
    return None


def mmbench_accuracy(tsv: str, xlsx: str) -> dict[str, tuple[int, int]] | None:
    """{"all" and each category: (correct, total)} of the submission `xlsx` against the answers in `tsv`.

    None when the TSV has no `answer` column (the test split: only the server can score it).
    """
    import pandas as pd  # the eval extra

    questions = pd.read_table(tsv)
    if "answer" not in questions.columns:
        return None
    submitted = pd.read_excel(xlsx, engine="openpyxl")
    answer = dict(zip(questions["index"], questions["answer"]))
    category = dict(zip(questions["index"], questions["category"])) if "category" in questions.columns else {}
    groups: dict[str, list[int]] = {"all": [0, 0]}
    for _, row in submitted.iterrows():
        options = {k: str(row[k]) for k in OPTION_LETTERS if k in row and isinstance(row[k], str) and row[k]}
        ok = int(option_letter(row["prediction"], options) == answer.get(row["index"]))
        for key in ("all", str(category.get(row["index"], "other"))):
            groups.setdefault(key, [0, 0])
            groups[key][0] += ok
            groups[key][1] += 1
    return {k: (v[0], v[1]) for k, v in groups.items() if v[1]}


def format_accuracy(split: str, scores: dict[str, tuple[int, int]]) -> str:
    """Printed lines: overall, then one per category (categories only when there are several)."""
    correct, total = scores["all"]
    lines = [f"MMBench {split} accuracy (single round, option letter): {100.0 * correct / total:.2f}% "
             f"({correct}/{total})"]
    categories = sorted(k for k in scores if k != "all")
    if len(categories) > 1:
        lines += [f"  {name}: {100.0 * c / t:.2f}% ({c}/{t})" for name in categories for c, t in [scores[name]]]
    return "\n".join(lines)
