"""`python -m mgm.eval.model_vqa_science`: answers for ScienceQA in LLaVA's JSON format (docs/original.md#evaluation).

Same flags as the original: --model-path --model-base --image-folder --question-file (JSON list of
`{id, conversations: [{value: question}, ...], image?}`, default tables/question.json) --answers-file
--conv-mode llava_v0 --num-chunks --chunk-idx --temperature 0.2 --answer-prompter (unused)
--single-pred-prompt; answers up to 1024 new tokens (--max_new_tokens); plus the shared engine's flags.

The question is the first turn's text with `<image>` removed and stripped. Questions with an image
are sent as `<image>\\n<question>` and recorded with the prompt `"<image>\\n" + question`; questions
without one run text-only. --single-pred-prompt appends "\\nAnswer with the option's letter from the
given choices directly." to both. Records: `{question_id (= id), prompt, text, answer_id, model_id,
metadata: {}}`, scored by `python -m mgm.eval.eval_science_qa`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

from mgm.errors import UserError
from mgm.eval.questions import read_question_json
from mgm.eval.runner import VQA_FORMAT, EvalItem, runner_cli

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."
FORMAT = dataclasses.replace(VQA_FORMAT, runner="model_vqa_science", key_of=lambda r: (r["question_id"],))
_EXPECTED = "a JSON list of {id, conversations: [{from, value}, ...], image?} (LLaVA ScienceQA format)"


def load_questions(path: str) -> list[dict]:
    path = os.path.expanduser(path)
    data = read_question_json(path, list, _EXPECTED)
    for n, q in enumerate(data):
        where = f"question file {path}, entry {n}"
        if not isinstance(q, dict) or "id" not in q:
            raise UserError(f"{where}: missing 'id'; expected {_EXPECTED}")
        conv = q.get("conversations")
        first = conv[0] if isinstance(conv, list) and conv else None
        if not (isinstance(first, dict) and isinstance(first.get("value"), str)):
            raise UserError(f"{where} (id {q['id']!r}): missing conversations[0].value; expected {_EXPECTED}")
    return data


def science_items(question_file: str, image_folder: str, single_pred_prompt: bool) -> list[EvalItem]:
    import shortuuid

    items = []
    for n, line in enumerate(load_questions(question_file)):
        idx = line["id"]
        qs = line["conversations"][0]["value"].replace("<image>", "").strip()
        cur_prompt = qs
        image_file = line.get("image")
        n_images = 1 if "image" in line else 0
        if n_images:
            cur_prompt = "<image>" + "\n" + cur_prompt
        if single_pred_prompt:
            qs = qs + "\n" + SINGLE_PRED_PROMPT
            cur_prompt = cur_prompt + "\n" + SINGLE_PRED_PROMPT

        def load(image_file=image_file) -> list:
            from mgm.data.image import open_image

            if not isinstance(image_file, str) or not image_file:
                raise UserError(f"'image' must be a file name, got {image_file!r}")
            return [open_image(os.path.join(image_folder, image_file))]

        def make(answer: str, name: str, idx=idx, prompt=cur_prompt) -> dict:
            return {"question_id": idx, "prompt": prompt, "text": answer, "answer_id": shortuuid.uuid(),
                    "model_id": name, "metadata": {}}

        items.append(EvalItem(key=(idx,), text=qs, n_images=n_images, load_images=load, make_record=make,
                              where=f"question file {question_file}, entry {n} (id {idx!r})"))
    return items


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--answer-prompter", action="store_true", help="accepted for compatibility (unused)")
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option letter only")


build_parser, run, main = runner_cli(
    "python -m mgm.eval.model_vqa_science", __doc__, FORMAT,
    lambda args: science_items(args.question_file, args.image_folder, args.single_pred_prompt),
    conv_mode="llava_v0", max_new_tokens=1024, question_file="tables/question.json", add_args=_add_args)


if __name__ == "__main__":
    main()
