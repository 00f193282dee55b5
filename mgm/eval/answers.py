"""What a runner writes and how an answers file is resumed: items, record formats, checks, reordering.

`load_answers` reads the records already in an answers file and refuses, naming file and line, one
that holds another runner's records, other questions, another shard or another model;
`reorder_answers` rewrites a complete shard in question-file order. Both write through
`mgm.eval.scorer_io.atomic_write_text`.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from mgm.errors import UserError
from mgm.eval.scorer_io import atomic_write_text

# How a foreign record is described in messages, keyed by `guess_record_kind`.
_KIND_NAMES = {
    "vqa": "a VQA-style answer {question_id, prompt, text, ...} (model_vqa_loader / model_vqa / model_vqa_science)",
    "mmbench": "an MMBench answer {question_id, round_id, options, option_char, ...} (model_vqa_mmbench)",
    "mathvista": "a MathVista answer {pid, query, response, ...} (model_math_vista)",
    "mmmu": "an MMMU answer {id, question_type, response, parsed_pred, ...} (MMMU run_llava.py)",
}


# -------------------------------------------------------------------------------------- data model
@dataclass
class EvalItem:
    """One question to answer.

    `key` identifies the question for resume (it must equal `AnswerFormat.key_of(record)` of its
    record); `text` is the user turn WITHOUT image tags (the runner adds one per image);
    `load_images()` returns the PIL images (raising UserError naming the file); `make_record(answer,
    model_name)` builds the output record; `where` locates the question for messages;
    `fixed_answer`, when set, is written without running the model (MMMU multi-image samples).
    """

    key: Hashable
    text: str
    n_images: int
    load_images: Callable[[], list]
    make_record: Callable[[str, str], dict]
    where: str
    fixed_answer: str | None = None


@dataclass(frozen=True)
class AnswerFormat:
    """What one runner writes: its record kind, required keys and the resume key of a record."""

    kind: str
    runner: str
    required: tuple[str, ...]
    key_of: Callable[[dict], Hashable]
    clean: Callable[[str], str] = str.strip
    model_field: str | None = "model_id"


def guess_record_kind(record: dict) -> str | None:
    """Which runner wrote `record` (by its distinctive keys), or None."""
    if "round_id" in record and "option_char" in record:
        return "mmbench"
    if "parsed_pred" in record:
        return "mmmu"
    if "pid" in record and "response" in record:
        return "mathvista"
    if "question_id" in record and "text" in record:
        return "vqa"
    return None


@dataclass
class RunResult:
    """Outcome of one `run_benchmark` call."""

    answers_file: str
    total: int
    resumed: int = 0
    written: int = 0
    failed: list[str] = field(default_factory=list)
    complete: bool = False


# --------------------------------------------------------------------------------- answers file
def _describe_key(key: Hashable) -> str:
    return repr(key[0] if isinstance(key, tuple) and len(key) == 1 else key)


def load_answers(path: str, fmt: AnswerFormat, all_keys: Counter, chunk_keys: Counter, model_name: str | None,
                 question_source: str) -> list[dict]:
    """Read and check an existing answers file; a half-written last line (killed run) is dropped.

    Raises UserError (naming the file and line) for a record of another runner, an answer to a
    question not in the question file, an answer of another shard, or one of another model.
    """
    if not os.path.exists(path):
        return []
    if os.path.isdir(path):
        raise UserError(f"--answers-file {path} is a directory")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise UserError(f"answers file {path} is not UTF-8 text; is it an answers file?") from None
    lines = text.split("\n")
    records: list[dict] = []
    repaired = None
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"answers file {path}, line {index + 1}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if index == len(lines) - 1:  # no newline after it: the run was killed while writing it
                repaired = "\n".join(lines[:index]) + ("\n" if index else "")
                print(f"note: {where} is incomplete (interrupted run); dropping it", file=sys.stderr)
                break
            raise UserError(f"{where} is not a JSON record; expected the JSONL written by {fmt.runner} "
                            "(use another --answers-file, or --overwrite to replace it)") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
        kind = guess_record_kind(record)
        missing = [k for k in fmt.required if k not in record]
        if kind != fmt.kind or missing:
            found = _KIND_NAMES.get(kind or "", "an unknown record (keys: " + ", ".join(sorted(record)[:10]) + ")")
            raise UserError(f"{where} holds {found}, not an answer of {fmt.runner}; this answers file belongs to "
                            "another benchmark (use another --answers-file, or --overwrite to replace it)")
        try:
            key = fmt.key_of(record)
            hash(key)
        except (KeyError, TypeError):
            raise UserError(f"{where}: record has no usable question key; is it an answer of {fmt.runner}?") from None
        if key not in all_keys:
            raise UserError(f"{where}: question {_describe_key(key)} is not in {question_source}; the file holds "
                            "answers to other questions (another benchmark?). Use another --answers-file, or "
                            "--overwrite to replace it")
        if key not in chunk_keys:
            raise UserError(f"{where}: question {_describe_key(key)} belongs to another shard than this "
                            "--chunk-idx/--num-chunks; every shard needs its own --answers-file")
        if fmt.model_field and model_name is not None and record.get(fmt.model_field) != model_name:
            raise UserError(f"{where}: answer of model {record.get(fmt.model_field)!r}, but this run uses "
                            f"{model_name!r}; use another --answers-file, or --overwrite to replace it")
        records.append(record)
    if repaired is None and text and not text.endswith("\n"):
        repaired = text + "\n"  # the last record lacks its newline: appending must start a new line
    if repaired is not None:
        atomic_write_text(path, repaired)
    return records


def reorder_answers(path: str, records: list[dict], items: list[EvalItem], fmt: AnswerFormat) -> int:
    """Rewrite the answers in question order (one record per item, duplicates dropped); returns #dropped."""
    buckets: dict[Hashable, list[dict]] = {}
    for record in records:
        buckets.setdefault(fmt.key_of(record), []).append(record)
    ordered = []
    for item in items:
        bucket = buckets.get(item.key)
        if bucket:
            ordered.append(bucket.pop(0))
    dropped = len(records) - len(ordered)
    text = "".join(json.dumps(r) + "\n" for r in ordered)
    current = "".join(json.dumps(r) + "\n" for r in records)
    if text != current:
        atomic_write_text(path, text)
    return dropped
