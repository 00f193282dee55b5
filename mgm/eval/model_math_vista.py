"""`python -m mgm.eval.model_math_vista`: answers for MathVista testmini (docs/original.md#evaluation).

Same flags as the original: --model-path --model-base --image-folder --question-file (`testmini.json`,
a JSON object pid -> problem) --answers-file --conv-mode llava_v0 --num-chunks --chunk-idx
--temperature 0.2 --answer-prompter / --single-pred-prompt (unused) --load_8bit; answers up to 1024
new tokens (--max_new_tokens); plus the shared engine's flags. Resumable like the original (pids
already in the answers file are skipped).

Query (the MathVista kit's zero-shot "solution" prompt): a hint line chosen by question/answer type
(multiple choice, integer, float with one or two decimals, list: the HINT_* constants below, verbatim
from the original), then `Question: <question>` (+ ` (Unit: <unit>)`), then for choices `Choices:` and
one `(A) choice` line each, joined by newlines. (The original had no hint for other float precisions
and crashed; such problems get "Hint: Please answer the question requiring a floating-point number
with N decimal places and provide the final value at the end.")

Records: the problem dict with `query` and `response` set (JSONL), read by
`mgm/eval/MathVista/extract_answer.py` and `calculate_score.py`.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from mgm.errors import UserError
from mgm.eval.questions import read_question_json
from mgm.eval.runner import AnswerFormat, EvalItem, runner_cli

HINT_MULTI_CHOICE = ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
                     "at the end.")
HINT_INTEGER = ("Hint: Please answer the question requiring an integer answer and provide the final value, "
                "e.g., 1, 2, 3, at the end.")
HINT_FLOAT_1 = ("Hint: Please answer the question requiring a floating-point number with one decimal place and "
                "provide the final value, e.g., 1.2, 1.3, 1.4, at the end.")
HINT_FLOAT_2 = ("Hint: Please answer the question requiring a floating-point number with two decimal places and "
                "provide the final value, e.g., 1.23, 1.34, 1.45, at the end.")
HINT_LIST = ("Hint: Please answer the question requiring a Python list as an answer and provide the final list, "
             "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.")

FORMAT = AnswerFormat(kind="mathvista", runner="model_math_vista", required=("pid", "query", "response"),
                      key_of=lambda r: (str(r["pid"]),), model_field=None)
_EXPECTED = ("MathVista testmini.json: a JSON object pid -> {question, image, choices, unit, precision, "
             "question_type, answer_type, ...}")


def hint_for(problem: Mapping) -> str:
    """The hint line of a problem (module docstring)."""
    if problem.get("question_type") == "multi_choice":
        return HINT_MULTI_CHOICE
    answer_type = problem.get("answer_type")
    precision = problem.get("precision")
    if answer_type == "integer":
        return HINT_INTEGER
    if answer_type == "float" and precision == 1:
        return HINT_FLOAT_1
    if answer_type == "float" and precision == 2:
        return HINT_FLOAT_2
    if answer_type == "list":
        return HINT_LIST
    if answer_type == "float":
        digits = int(precision) if isinstance(precision, (int, float)) else precision
        return (f"Hint: Please answer the question requiring a floating-point number with {digits} decimal places "
                "and provide the final value at the end.")
    raise UserError(f"answer_type {answer_type!r} is not one of integer, float, list (question_type "
                    f"{problem.get('question_type')!r})")


def create_one_query(problem: Mapping) -> str:
    """The zero-shot query: hint, `Question: ...` (+ unit), then the choices block."""
    question_text = f"Question: {problem['question']}"
    if problem.get("unit"):
        question_text += f" (Unit: {problem['unit']})"
    choices = problem.get("choices")
    choices_text = ""
    if choices:
        choices_text = "\n".join(["Choices:"] + [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(choices)])
    elements = [hint_for(problem), question_text, choices_text]
    return ("\n\n" + "\n".join(e for e in elements if e != "")).strip()


def load_problems(path: str) -> dict:
    return read_question_json(path, dict, _EXPECTED)


def math_vista_items(question_file: str, image_folder: str) -> list[EvalItem]:
    items = []
    for pid, info in load_problems(question_file).items():
        where = f"question file {question_file}, pid {pid!r}"
        if not isinstance(info, dict) or "question" not in info:
            raise UserError(f"{where}: missing 'question'; expected {_EXPECTED}")
        try:
            query = create_one_query(info)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        key = str(info.get("pid", pid))
        image_file = info.get("image")

        def load(image_file=image_file) -> list:
            from mgm.data.image import open_image

            return [open_image(os.path.join(image_folder, image_file))]

        def make(answer: str, name: str, info=info, query=query, key=key) -> dict:
            record = dict(info)
            record.setdefault("pid", key)
            record["query"] = query
            record["response"] = answer
            return record

        items.append(EvalItem(key=(key,), text=query, n_images=1 if image_file else 0, load_images=load,
                              make_record=make, where=where))
    return items


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--answer-prompter", action="store_true", help="accepted for compatibility (unused)")
    parser.add_argument("--single-pred-prompt", action="store_true", help="accepted for compatibility (unused)")


build_parser, run, main = runner_cli(
    "python -m mgm.eval.model_math_vista", __doc__, FORMAT,
    lambda args: math_vista_items(args.question_file, args.image_folder),
    conv_mode="llava_v0", max_new_tokens=1024, question_file="tables/question.json", add_args=_add_args)


if __name__ == "__main__":
    main()
