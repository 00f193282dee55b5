"""`python -m mgm.integrations.vlmevalkit.tsv`: a LLaVA question file as a VLMEvalKit local VQA set.

    python -m mgm.integrations.vlmevalkit.tsv --question-file bench/textvqa/llava_textvqa_val_v051_ocr.jsonl \\
        --image-folder bench/textvqa/train_images --out LMUData/MyVQA.tsv

The question file is what `python -m mgm.eval.model_vqa_loader --question-file` reads (JSON lines
`{question_id, image, text}`, one image each under --image-folder). The TSV has one row per line, in
order: `index` (0, 1, ...: VLMEvalKit's key), `question_id`, `question` (= text), `image` (the file's
bytes as base64) and `answer` when the lines carry one (--answer-field). It has no option columns,
so VLMEvalKit treats it as a VQA set and mgm's class asks each question as model_vqa_loader does;
VLMEvalKit cannot score a local VQA set, so run it with `--mode infer`.
"""
from __future__ import annotations

import argparse
import base64
import os
from collections.abc import Sequence

from mgm.errors import UserError, exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mgm.integrations.vlmevalkit.tsv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--question-file", required=True, help="LLaVA JSONL {question_id, image, text}")
    parser.add_argument("--image-folder", required=True, help="folder the 'image' names are relative to")
    parser.add_argument("--out", required=True, help="the TSV to write: LMUData/<NAME>.tsv")
    parser.add_argument("--answer-field", default="answer", help="field with the reference answer, if any")
    return parser


def write_tsv(question_file: str, image_folder: str, out: str, answer_field: str = "answer") -> int:
    """Write the TSV; returns the number of rows."""
    import pandas as pd

    from mgm.eval.questions import read_question_jsonl

    rows = []
    expected = "JSONL lines {question_id, image, text} (LLaVA-style benchmark questions)"
    for lineno, q in read_question_jsonl(question_file, ("question_id", "image", "text"), expected):
        path = os.path.join(image_folder, str(q["image"]))
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise UserError(f"question file {question_file}, line {lineno}: cannot read image {path}: {exc}") from None
        row = {"index": len(rows), "question_id": q["question_id"], "question": q["text"],
               "image": base64.b64encode(data).decode()}
        if answer_field in q:
            row["answer"] = q[answer_field]
        rows.append(row)
    if not rows:
        raise UserError(f"question file {question_file} has no questions")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    pd.DataFrame(rows).to_csv(out, sep="\t", index=False)
    return len(rows)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    n = write_tsv(args.question_file, args.image_folder, args.out, args.answer_field)
    print(f"{n} questions written to {args.out}")


if __name__ == "__main__":
    main()
