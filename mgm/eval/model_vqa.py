"""`python -m mgm.eval.model_vqa`: answers for open-ended JSONL benchmarks (MM-Vet style, long answers).

Same flags as the original (docs/original.md#evaluation): --model-path --model-base --image-folder --question-file
(JSONL `{question_id, image, text}`) --answers-file --conv-mode llava_v1 --num-chunks --chunk-idx
--temperature 0.2 --top_p --num_beams 1; answers up to 1024 new tokens (the original's fixed limit,
here also settable with --max_new_tokens); plus the shared engine's --batch-size, --device, --limit,
--overwrite, --load_8bit (see `mgm.eval.runner`).

Output records: `{question_id, prompt, text, answer_id, model_id, metadata: {}}`.
"""
from __future__ import annotations

import dataclasses

from mgm.eval.runner import VQA_FORMAT, runner_cli, vqa_items

FORMAT = dataclasses.replace(VQA_FORMAT, runner="model_vqa")


build_parser, run, main = runner_cli(
    "python -m mgm.eval.model_vqa", __doc__, FORMAT,
    lambda args: vqa_items(args.question_file, args.image_folder),
    conv_mode="llava_v1", max_new_tokens=1024)


if __name__ == "__main__":
    main()
