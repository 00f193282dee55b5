"""`doc_to_*` functions for lmms-eval task YAMLs over the local files mgm's own runners read, so a local
lmms-eval task asks the model exactly what the runner asks (README: "In lmms-eval and VLMEvalKit").

A YAML names them with `!function mgm.integrations.lmms_eval.local_tasks.<name>` (lmms-eval imports a
dotted name it does not find beside the YAML as a module):

* LLaVA question files (what `model_vqa_loader --question-file` reads: JSON lines `{question_id, image,
  text}`), `dataset_path: json`: `doc_to_text: text` and `doc_to_visual: ...image_from_folder`, with
  the image folder in `lmms_eval_specific_kwargs: {default: {image_folder: DIR}}` (relative paths
  from the folder lmms-eval runs in). generate_until answers equal model_vqa_loader's.
* MMBench TSVs (what `model_vqa_mmbench --question-file` reads), `dataset_path: csv` with
  `dataset_kwargs: {sep: "\\t", data_files: ...}`, as a multiple-choice task: `mmbench_image`,
  `mmbench_question` (the `--single-pred-prompt` prompt: hint, question, "L. option" lines, "Answer
  with the option's letter from the given choices directly."; `lang: cn` in the kwargs for the
  Chinese line), `mmbench_choices` (the option letters, scored as continuations) and
  `mmbench_target` (the answer letter's position). The chosen letter is the likeliest one, the
  letter greedy decoding starts with whenever the model answers with a letter.

HF's csv reader parses a numeric cell as a number; such option cells are written without a ".0"
that the file may have had (mgm's runner reads every option as text).
"""
from __future__ import annotations

import base64
import os
from typing import Any

from mgm.errors import UserError


def image_from_folder(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list:
    """The image `doc["image"]` of a LLaVA question-file row, under `image_folder`."""
    from mgm.data.image import open_image

    folder = (lmms_eval_specific_kwargs or {}).get("image_folder")
    if not folder:
        raise UserError("image_from_folder needs the image folder: lmms_eval_specific_kwargs: "
                        "{default: {image_folder: DIR}} in the task YAML")
    return [open_image(os.path.join(os.path.expanduser(str(folder)), doc["image"]))]


def _text(value: Any) -> Any:
    """A cell as the runner sees it: text, or None when empty (numbers from HF's csv reader as text)."""
    from mgm.eval.model_vqa_mmbench import is_none

    if is_none(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _row(doc: dict) -> dict:
    from mgm.eval.model_vqa_mmbench import ALL_OPTIONS

    return {key: _text(doc.get(key)) for key in ("question", "hint", *ALL_OPTIONS)}


def _options(doc: dict) -> list[str]:
    from mgm.eval.model_vqa_mmbench import get_options

    return [str(o) for o in get_options(_row(doc))]


def mmbench_image(doc: dict) -> list:
    """The base64 `image` cell of an MMBench row."""
    from mgm.data.image import open_image

    cell = doc.get("image")
    if not isinstance(cell, str) or not cell:
        raise UserError(f"MMBench row {doc.get('index')}: the 'image' cell is empty; expected a base64 image")
    return [open_image(base64.b64decode(cell), name=f"the base64 image of MMBench row {doc.get('index')}")]


def mmbench_question(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question `model_vqa_mmbench --single-pred-prompt [--lang cn]` asks for this row."""
    from mgm.eval.model_vqa_mmbench import SINGLE_PRED_PROMPT, build_question

    lang = (lmms_eval_specific_kwargs or {}).get("lang", "en")
    if lang not in SINGLE_PRED_PROMPT:
        raise UserError(f"mmbench_question: lang {lang!r} is not supported; valid: {', '.join(SINGLE_PRED_PROMPT)}")
    return build_question(_row(doc), _options(doc)) + "\n" + SINGLE_PRED_PROMPT[lang]


def mmbench_choices(doc: dict) -> list[str]:
    """The letters of the row's options (A, B, ... up to the first empty cell)."""
    from mgm.eval.model_vqa_mmbench import ALL_OPTIONS

    return ALL_OPTIONS[: len(_options(doc))]


def mmbench_target(doc: dict) -> int:
    """The position of the `answer` letter among `mmbench_choices`."""
    letters = mmbench_choices(doc)
    answer = _text(doc.get("answer"))
    if answer not in letters:
        raise UserError(f"MMBench row {doc.get('index')}: answer {answer!r} is not one of its options {letters}")
    return letters.index(answer)
