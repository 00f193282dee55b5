"""`python -m mgm.eval.model_vqa_mmbench`: answers for MMBench TSV files (docs/original.md#evaluation).

Same flags as the original: --model-path --model-base --image-folder (unused) --question-file (MMBench
TSV: index, question, hint, A, B, C, D, image as base64, ...) --answers-file --conv-mode llava_v1
--num-chunks --chunk-idx --temperature 0.2 --top_p --num_beams 1 --all-rounds --single-pred-prompt
--lang en|cn; answers up to 1024 new tokens (--max_new_tokens); plus the shared engine's flags.

Prompt, as the original: options are the columns A, B, C, D up to the first empty one (None, NaN,
"nan" or "none" in any case); the question is `hint + "\\n" + question` when there is a hint, then one
line `"\\n<L>. <option>"` per option; with --single-pred-prompt the line "Answer with the option's
letter from the given choices directly." (cn: "请直接回答选项字母。") follows. With --all-rounds each
row is asked once per option, the option texts rotating one place each round while the letters stay
A, B, C, ... (circular evaluation); a record's `options`/`option_char` are the rotated lists.

Records: `{question_id (= index), round_id, prompt, text, options, option_char, answer_id, model_id,
metadata: {}}`. The plain-model template switch is keyed on "plain" in the model name, as the original.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import math
import os
from collections.abc import Sequence
from typing import Any

from mgm.errors import UserError
from mgm.eval.runner import AnswerFormat, EvalItem, require_pandas, runner_cli

ALL_OPTIONS = ["A", "B", "C", "D"]
SINGLE_PRED_PROMPT = {"en": "Answer with the option's letter from the given choices directly.",
                      "cn": "请直接回答选项字母。"}
REQUIRED_COLUMNS = ("index", "question", "image", "A", "B")

FORMAT = AnswerFormat(
    kind="mmbench", runner="model_vqa_mmbench",
    required=("question_id", "round_id", "prompt", "text", "options", "option_char", "answer_id", "model_id",
              "metadata"),
    key_of=lambda r: (r["question_id"], r["round_id"]),
)


def is_none(value: Any) -> bool:
    """The original's empty-cell test: None, a float NaN, or the strings "nan"/"none" in any case."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.lower() in ("nan", "none")


def get_options(row: dict, letters: Sequence[str] = ALL_OPTIONS) -> list:
    """Option texts of columns A, B, ... up to the first empty cell (a missing column counts as empty)."""
    options = []
    for letter in letters:
        value = row.get(letter)
        if is_none(value):
            break
        options.append(value)
    return options


def build_question(row: dict, options: Sequence[str], letters: Sequence[str] = ALL_OPTIONS) -> str:
    """`hint\\nquestion` (hint when present) followed by one `\\nL. option` line per option."""
    question = row["question"]
    hint = row.get("hint")
    if not is_none(hint):
        question = hint + "\n" + question
    for letter, option in zip(letters[: len(options)], options):
        question = question + "\n" + letter + ". " + option
    return question


def read_tsv(path: str) -> list[dict]:
    """Rows of an MMBench TSV as dicts (pandas' NA parsing, as the original's `pd.read_table`)."""
    pd = require_pandas()
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise UserError(f"--question-file {path} does not exist")
    text_columns = {c: str for c in ("question", "hint", *ALL_OPTIONS)}
    try:
        frame = pd.read_table(path, dtype=text_columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"--question-file {path} is not a readable MMBench TSV: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"--question-file {path} lacks the column(s) {', '.join(missing)}; expected an MMBench TSV "
                        f"(index, question, hint, A, B, C, D, image as base64, ...); found: "
                        f"{', '.join(map(str, frame.columns[:12]))}")
    rows = []
    for record in frame.to_dict("records"):
        record = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        rows.append(record)
    return rows


def _index(value: Any, where: str) -> Any:
    # Plain Python numbers so the record serialises like the original's (pandas gives numpy scalars).
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None:
        raise UserError(f"{where}: empty 'index' cell")
    return value


def _image_loader(b64: Any, where: str):
    def load() -> list:
        from mgm.data.image import open_image

        if not isinstance(b64, str) or not b64:
            raise UserError("the 'image' cell is empty; expected a base64-encoded image")
        try:
            data = base64.b64decode(b64, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise UserError(f"the 'image' cell is not valid base64 ({exc})") from None
        return [open_image(data, name=f"the base64 image of {where}")]

    return load


def mmbench_items(question_file: str, all_rounds: bool, single_pred_prompt: bool, lang: str) -> list[EvalItem]:
    """One item per (row, round)."""
    import shortuuid

    if lang not in SINGLE_PRED_PROMPT:
        raise UserError(f"--lang {lang!r} is not supported; valid: {', '.join(SINGLE_PRED_PROMPT)}")
    items = []
    for number, row in enumerate(read_tsv(question_file), start=1):
        where = f"question file {question_file}, row {number}"
        idx = _index(row.get("index"), where)
        where = f"{where} (index {idx})"
        if not isinstance(row.get("question"), str):
            raise UserError(f"{where}: empty 'question' cell")
        options = [str(o) for o in get_options(row)]
        option_chars = ALL_OPTIONS[: len(options)]
        load = _image_loader(row.get("image"), where)
        for round_idx in range(len(options) if all_rounds else 1):
            cur_prompt = build_question(row, options)
            text = cur_prompt
            if single_pred_prompt:
                text = text + "\n" + SINGLE_PRED_PROMPT[lang]

            def make(answer: str, name: str, idx=idx, round_idx=round_idx, prompt=cur_prompt,
                     options=list(options), chars=list(option_chars)) -> dict:
                return {"question_id": idx, "round_id": round_idx, "prompt": prompt, "text": answer,
                        "options": options, "option_char": chars, "answer_id": shortuuid.uuid(),
                        "model_id": name, "metadata": {}}

            items.append(EvalItem(key=(idx, round_idx), text=text, n_images=1, load_images=load,
                                  make_record=make, where=where + (f", round {round_idx}" if all_rounds else "")))
            # Circular evaluation: rotate the option texts (and their original letters) by one.
            options = options[1:] + options[:1]
            option_chars = option_chars[1:] + option_chars[:1]
    return items


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all-rounds", action="store_true", help="circular evaluation: one round per option")
    parser.add_argument("--single-pred-prompt", action="store_true",
                        help="ask for the option letter only (the MGM scripts use this)")
    parser.add_argument("--lang", default="en", help="language of the single-pred prompt: en (default) or cn")


build_parser, run, main = runner_cli(
    "python -m mgm.eval.model_vqa_mmbench", __doc__, FORMAT,
    lambda args: mmbench_items(args.question_file, args.all_rounds, args.single_pred_prompt, args.lang),
    conv_mode="llava_v1", max_new_tokens=1024, add_args=_add_args, conv_switch="model")


if __name__ == "__main__":
    main()
