"""Reading question files for the runners: LLaVA-style JSONL (`vqa_items`) and the pandas requirement."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

from mgm.errors import UserError
from mgm.eval.answers import AnswerFormat, EvalItem


def require_pandas():
    """pandas (the `eval` extra), or a UserError saying how to install it."""
    try:
        import pandas
    except ImportError:
        raise UserError("reading MMBench TSV / MMMU parquet files needs pandas (and pyarrow): "
                        "pip install 'mgm[eval]'") from None
    return pandas


# ------------------------------------------------------------------------- question files
def read_question_json(path: str, kind: type, expected: str):
    """A whole-file JSON question file that must hold a `kind` (dict or list); errors name file and format."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise UserError(f"--question-file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise UserError(f"question file {path} is not JSON (line {exc.lineno}); expected {expected}") from None
    except UnicodeDecodeError:
        raise UserError(f"question file {path} is not UTF-8 text; expected {expected}") from None
    if not isinstance(data, kind):
        raise UserError(f"question file {path}: expected {expected}, got a JSON {type(data).__name__}")
    return data


def read_question_jsonl(path: str, required: Sequence[str], expected: str) -> list[tuple[int, dict]]:
    """`(line number, record)` of a JSONL question file; a wrong format is a UserError naming file and line."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise UserError(f"--question-file {path} does not exist")
    out = []
    with open(path, encoding="utf-8") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError:
            raise UserError(f"--question-file {path} is not UTF-8 text; expected {expected}") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"question file {path}, line {lineno}: not a JSON object per line; "
                            f"expected {expected}") from None
        if not isinstance(record, dict):
            raise UserError(f"question file {path}, line {lineno}: expected a JSON object, got "
                            f"{type(record).__name__}; expected {expected}")
        missing = [k for k in required if k not in record]
        if missing:
            raise UserError(f"question file {path}, line {lineno}: missing key {missing[0]!r}; expected {expected}")
        out.append((lineno, record))
    return out


def _image_loader(folder: str, name: str) -> Callable[[], list]:
    def load() -> list:
        from mgm.data.image import open_image

        return [open_image(os.path.join(folder, name))]

    return load


VQA_FORMAT = AnswerFormat(
    kind="vqa", runner="model_vqa_loader",
    required=("question_id", "prompt", "text", "answer_id", "model_id", "metadata"),
    key_of=lambda r: (r["question_id"], r["prompt"]),
)


def vqa_items(question_file: str, image_folder: str) -> list[EvalItem]:
    """Items of a LLaVA-style JSONL `{question_id, image, text}` (TextVQA, MME, MM-Vet, POPE, GQA, ...).

    Resume key: (question_id, text) — TextVQA and MME reuse one question_id for several questions.
    """
    import shortuuid

    expected = "JSONL lines {question_id, image, text} (LLaVA-style benchmark questions)"
    items = []
    for lineno, q in read_question_jsonl(question_file, ("question_id", "image", "text"), expected):
        if not isinstance(q["text"], str) or not isinstance(q["image"], str):
            raise UserError(f"question file {question_file}, line {lineno}: 'text' and 'image' must be strings")
        if isinstance(q["question_id"], (list, dict)):
            raise UserError(f"question file {question_file}, line {lineno}: 'question_id' must be a string or number")

        def make(answer: str, name: str, q: dict = q) -> dict:
            return {"question_id": q["question_id"], "prompt": q["text"], "text": answer,
                    "answer_id": shortuuid.uuid(), "model_id": name, "metadata": {}}

        items.append(EvalItem(key=(q["question_id"], q["text"]), text=q["text"], n_images=1,
                              load_images=_image_loader(image_folder, q["image"]), make_record=make,
                              where=f"question file {question_file}, line {lineno}"))
    return items
