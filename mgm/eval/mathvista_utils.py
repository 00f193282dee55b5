"""MathVista answer extraction and scoring (the vendored MathVista kit of Mini-Gemini, docs/original.md#evaluation).

Extraction (`extract_answer`), per problem without a valid `extraction`:
empty response -> ""; multiple choice and the response is one of the choices -> the response;
integer answer and `int(response)` parses -> str of it; float answer and `float(response)` parses ->
str of it; with quick extraction, `The answer is "(.*)"\\.` -> the quoted text; otherwise the LLM judge
is asked with MathVista's few-shot "ext_ans" prompt + `"{query}\\n\\n{response}\\n\\nExtracted answer: "`.

Scoring (`normalize_extracted_answer` + `safe_equal`): multiple choice -> a "(X)" letter or a bare
letter maps to its choice text, anything else to the closest choice by Levenshtein distance (first
one on ties); integer -> `str(int(float(x)))`; float -> `str(round(float(x), precision))`; list ->
`str(x)`; failures -> None. `true_false = prediction == answer` (string equality).
PARITY: `round()` is called with the problem's `precision` exactly as stored; a float precision such
as 1.0 makes Python's `round` raise, the prediction becomes None and the problem counts wrong, as in
the original.

Scores: `{"average": {"accuracy": "xx.xx"-style string of the percentage rounded to 2, "correct",
"total"}}` plus, for question_type, answer_type, language, source, category, task, context, grade and
skills (the problem's `metadata` merged in), `{value: {"accuracy": "%.2f" string, "correct", "total"}}`
sorted by accuracy (descending). The CLIs are mgm/eval/MathVista/{extract_answer,calculate_score}.py.

Files: the runner writes JSONL (one problem per line, keyed by `pid`); the original extractor then
overwrote that `.jsonl` with a JSON dict `{pid: problem}`. Both formats are read here; results are
written back as the JSON dict like the original, but the JSONL first goes to `<file>.bak`.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mgm.errors import UserError
from mgm.eval.scorer_io import atomic_write_text, backup_file, check_keys, require_file

# MathVista's public few-shot demonstration for answer extraction (pids 852, 104, 824, 506, 540):
# an instruction, then five worked examples (integer 14, float 0.6, float 1.45, list [2007, 2008],
# multiple choice B). Text kept character for character (including "line  graph") because the judge's
# output, hence the score, depends on it.
DEMO_PROMPT = """
Please read the following example. Then extract the answer from the model response and type it at the end of the prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: Which number is missing?

Model response: The number missing in the sequence is 14.

Extracted answer: 14

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the fraction of females facing the camera?

Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the group are facing the camera.

Extracted answer: 0.6

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)

Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.

Extracted answer: 1.45

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.
Question: Between which two years does the line  graph saw its maximum peak?

Model response: The line graph saw its maximum peak between 2007 and 2008.

Extracted answer: [2007, 2008]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: What fraction of the shape is blue?
Choices:
(A) 3/11
(B) 8/11
(C) 6/11
(D) 3/5

Model response: The correct answer is (B) 8/11.

Extracted answer: B
"""

TARGET_KEYS = ("question_type", "answer_type", "language", "source", "category", "task", "context", "grade", "skills")
_QUICK = re.compile(r'The answer is "(.*)"\.')
_LETTER = re.compile(r"\(([a-zA-Z])\)")


# ------------------------------------------------------------------------------------ file I/O
def _parse_results(text: str, path: str, what: str) -> tuple[dict[str, dict], bool]:
    """`({pid: problem}, is_raw_runner_output)` from a JSON dict file or JSONL of problems."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return data, False  # the JSON dict written by a previous extraction / scoring run
    if isinstance(data, dict):
        records, line_of = [data], {0: 1}  # JSONL with a single problem
    elif isinstance(data, list):
        records, line_of = data, {i: i + 1 for i in range(len(data))}
    else:
        records, line_of = [], {}
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{what} {path}, line {lineno}: neither a JSON dict file nor JSONL "
                                f"({exc.msg})") from None
            line_of[len(records) - 1] = lineno
    results: dict[str, dict] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(f"{what} {path}, record {line_of[i]}: expected a JSON object")
        check_keys(record, ("pid",), f"{what} {path}, line {line_of[i]}")
        results[record["pid"]] = record
    if not results:
        raise UserError(f"{what} {path} has no problems")
    return results, True


def load_results(path: str, what: str = "--output_file") -> dict[str, dict]:
    """Read `{pid: problem}` from a JSON dict file or a JSONL file of problems with a `pid` key."""
    require_file(path, what)
    with open(path, encoding="utf-8") as f:
        return _parse_results(f.read(), path, what)[0]


def is_raw_runner_file(path: str) -> bool:
    """True if `path` holds runner output (JSONL of problems) rather than a results JSON dict."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return _parse_results(text, path, "file")[1]
    except UserError:
        return True  # unknown content: keep a copy to be safe


def save_results(path: str, results: Mapping[str, Any], backed_up: set[str] | None = None) -> None:
    """Write `{pid: problem}` as JSON (indent 4) like the original, keeping the raw input safe.

    Before `path` is overwritten for the first time in this run (tracked in `backed_up`), it is copied
    to `path + ".bak"` if it is raw JSONL, or if no backup exists yet, so runner output is never lost.
    """
    if backed_up is not None and path not in backed_up:
        if os.path.exists(path) and (is_raw_runner_file(path) or not os.path.exists(path + ".bak")):
            backup_file(path)
        backed_up.add(path)
    atomic_write_text(path, json.dumps(results, indent=4))


# --------------------------------------------------------------------------------- extraction
def verify_extraction(extraction: Any) -> bool:
    """A stored extraction is valid when it is not None and not blank."""
    if extraction is None:
        return False
    return str(extraction).strip() != ""


def create_test_prompt(demo_prompt: str, query: str, response: str) -> str:
    """Few-shot demo + this problem's query and model response + "Extracted answer: "."""
    return f"{demo_prompt.strip()}\n\n{query}\n\n{response}\n\nExtracted answer: "


def rule_based_extraction(response: str, problem: Mapping, quick_extract: bool = False) -> str | None:
    """The extraction rules that need no LLM; None when the judge must be asked."""
    if response == "":
        return ""
    if problem["question_type"] == "multi_choice" and response in (problem["choices"] or ()):
        return response
    if problem["answer_type"] == "integer":
        try:
            return str(int(response))
        except (ValueError, TypeError):
            pass
    if problem["answer_type"] == "float":
        try:
            return str(float(response))
        except (ValueError, TypeError):
            pass
    if quick_extract and isinstance(response, str):
        match = _QUICK.search(response)
        if match:
            return match.group(1)
    return None


def extract_answer(response: str, problem: Mapping, quick_extract: bool = False,
                   judge: Callable[[str], str] | None = None) -> str:
    """Extract the final answer of one problem (rules, then `judge(prompt)`; "" if no judge given)."""
    extraction = rule_based_extraction(response, problem, quick_extract)
    if extraction is not None:
        return extraction
    if judge is None:
        return ""
    return judge(create_test_prompt(DEMO_PROMPT, problem["query"], response))


_PROBLEM_KEYS = ("question_type", "answer_type", "choices", "query", "pid")


def run_extraction(results: dict[str, dict], response_label: str = "response", number: int = -1,
                   quick_extract: bool = False, rerun: bool = False, judge: Callable[[str], str] | None = None,
                   save: Callable[[dict], None] | None = None, save_every: int = 10,
                   where: str = "results") -> int:
    """Fill `extraction` for problems that lack a valid one; returns how many were processed.

    `save(results)` is called every `save_every` problems, after the last one, and before an error
    propagates (so an interrupted run resumes where it stopped).
    """
    full_pids = list(results)
    if number > 0:
        full_pids = full_pids[:min(number, len(full_pids))]
    print("Number of testing problems:", len(full_pids))
    test_pids = full_pids if rerun else [
        pid for pid in full_pids if not verify_extraction(results[pid].get("extraction"))]
    print("Number of problems to run:", len(test_pids))
    for pid in test_pids:
        check_keys(results[pid], (*_PROBLEM_KEYS, response_label), f"{where}, pid {pid!r}")
    for i, pid in enumerate(test_pids):
        problem = results[pid]
        try:
            problem["extraction"] = extract_answer(problem[response_label], problem, quick_extract, judge)
        except BaseException:
            if save is not None and i:
                save(results)
            raise
        if save is not None and (i % save_every == 0 or i == len(test_pids) - 1):
            save(results)
    return len(test_pids)


# ------------------------------------------------------------------------------------- scoring
def _levenshtein(a: str, b: str) -> int:
    try:
        from Levenshtein import distance  # the original's dependency (python-Levenshtein)
    except ImportError:
        from mgm.eval.m4c_evaluator import levenshtein as distance
    return distance(a, b)


def get_most_similar(prediction: str, choices: Sequence[str]) -> str:
    """The choice with the smallest edit distance to `prediction` (the first one on ties)."""
    distances = [_levenshtein(prediction, choice) for choice in choices]
    return choices[distances.index(min(distances))]


def normalize_extracted_answer(extraction: Any, choices: Sequence[str] | None, question_type: str,
                               answer_type: str, precision: Any) -> Any:
    """Map an extraction to the answer's format (rules and PARITY note in the module docstring)."""
    if question_type == "multi_choice":
        extraction = extraction.strip() if isinstance(extraction, str) else str(extraction)
        letter = _LETTER.findall(extraction)
        if letter:
            extraction = letter[0].upper()
        if not choices:
            raise ValueError("multiple-choice problem without choices")
        options = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in options:
            return choices[options.index(extraction)]
        return get_most_similar(extraction, choices)
    if answer_type == "integer":
        try:
            return str(int(float(extraction)))
        except Exception:  # noqa: BLE001 - the original's bare except: anything unparsable is None
            return None
    if answer_type == "float":
        try:
            return str(round(float(extraction), precision))
        except Exception:  # noqa: BLE001 - includes TypeError from a float precision (PARITY)
            return None
    if answer_type == "list":
        try:
            return str(extraction)
        except Exception:  # noqa: BLE001
            return None
    return extraction


def safe_equal(prediction: Any, answer: Any) -> bool:
    """`prediction == answer`, False if the comparison itself fails."""
    try:
        return bool(prediction == answer)
    except Exception:  # noqa: BLE001
        return False


def score_predictions(results: dict[str, dict], gts: Mapping[str, Mapping] | None = None, number: int = -1,
                      rerun: bool = False, where: str = "results") -> tuple[list[str], bool]:
    """Set `prediction` and `true_false` on the first `number` problems; returns (pids, changed)."""
    full_pids = list(results)
    if number > 0:
        full_pids = full_pids[:min(number, len(full_pids))]
    print("Number of testing problems:", len(full_pids))
    print("\nEvaluating the predictions...")
    changed = False
    for pid in full_pids:
        problem = results[pid]
        if rerun:
            problem.pop("prediction", None)
            problem.pop("true_false", None)
        check_keys(problem, ("choices", "question_type", "answer_type", "precision", "extraction"),
                   f"{where}, pid {pid!r} (run extract_answer.py first?)")
        if "answer" in problem:
            answer = problem["answer"]
        else:
            if gts is None or pid not in gts or "answer" not in gts[pid]:
                raise UserError(f"{where}, pid {pid!r}: no 'answer' in the results nor in the --gt_file")
            answer = problem["answer"] = gts[pid]["answer"]
        try:
            prediction = normalize_extracted_answer(problem["extraction"], problem["choices"],
                                                    problem["question_type"], problem["answer_type"],
                                                    problem["precision"])
        except ValueError as exc:
            raise UserError(f"{where}, pid {pid!r}: {exc}") from None
        true_false = safe_equal(prediction, answer)
        if problem.get("true_false", object()) != true_false or problem.get("prediction", object()) != prediction:
            changed = True
        if "true_false" not in problem or "prediction" not in problem:
            changed = True
        problem["prediction"] = prediction
        problem["true_false"] = true_false
    return full_pids, changed


def _acc_with_condition(rows: Sequence[Mapping], key: str, value: Any) -> tuple[int, int, str]:
    if key == "skills":
        total = [r for r in rows if isinstance(r.get(key), (list, tuple, str)) and value in r[key]]
    else:
        total = [r for r in rows if r.get(key) == value]
    correct = [r for r in total if r.get("true_false") is True]
    acc = "{:.2f}".format(len(correct) / len(total) * 100) if total else "0.00"
    return len(correct), len(total), acc


def compute_scores(results: Mapping[str, Mapping], full_pids: Sequence[str], verbose: bool = True) -> dict:
    """Average accuracy over `full_pids` and the per-metadata breakdown over ALL problems (as the original)."""
    total = len(full_pids)
    if total == 0:
        raise UserError("no problems to score")
    correct = sum(1 for pid in full_pids if results[pid].get("true_false"))
    accuracy = str(round(correct / total * 100, 2))
    if verbose:
        print(f"\nCorrect: {correct}, Total: {total}, Accuracy: {accuracy}%")
    scores: dict = {"average": {"accuracy": accuracy, "correct": correct, "total": total}}

    rows = []  # problems with `metadata` merged in (the saved results keep their metadata)
    for pid, problem in results.items():
        row = {k: v for k, v in problem.items() if k != "metadata"}
        metadata = problem.get("metadata")
        if not isinstance(metadata, dict):
            raise UserError(f"pid {pid!r} has no 'metadata' object (is this a MathVista results file?)")
        row.update(metadata)
        rows.append(row)
    if verbose:
        print(len(rows))
        print("Number of test problems:", len(rows))

    for key in TARGET_KEYS:
        if verbose:
            print(f"\nType: [{key}]")
        values: list = []
        for row in rows:  # first-appearance order (the original's order for skills was hash-dependent)
            candidates = row.get(key, []) if key == "skills" else [row.get(key)]
            for value in candidates or []:
                if value not in values:
                    values.append(value)
        scores[key] = {}
        for value in values:
            n_correct, n_total, acc = _acc_with_condition(rows, key, value)
            if n_total > 0:
                if verbose:
                    print(f"[{value}]: {acc}% ({n_correct}/{n_total})")
                scores[key][value] = {"accuracy": acc, "correct": n_correct, "total": n_total}
        scores[key] = dict(sorted(scores[key].items(), key=lambda item: float(item[1]["accuracy"]), reverse=True))
    return scores


def add_gains(scores: dict, random_scores: Mapping, random_file: str = "--random_file") -> None:
    """Add `acc_gain` over a random-guess score file (the original's --caculate_gain)."""
    try:
        for key in scores:
            if key == "average":
                gain = round(float(scores[key]["accuracy"]) - float(random_scores[key]["accuracy"]), 2)
                scores[key]["acc_gain"] = gain
            else:
                for sub_key in scores[key]:
                    gain = round(float(scores[key][sub_key]["accuracy"])
                                 - float(random_scores[key][sub_key]["accuracy"]), 2)
                    scores[key][sub_key]["acc_gain"] = str(gain)
    except (KeyError, TypeError) as exc:
        raise UserError(f"{random_file} has no score for {exc}; it must be a score file of the same problems") from None
