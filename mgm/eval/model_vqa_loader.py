"""`python -m mgm.eval.model_vqa_loader`: answers for LLaVA-style JSONL benchmarks (TextVQA, MME, POPE, GQA).

Same flags and defaults as the original (docs/original.md#evaluation): --model-path --model-base --image-folder
--question-file (JSONL `{question_id, image, text}`) --answers-file --conv-mode llava_v1 --num-chunks
--chunk-idx --temperature 0.2 --top_p --num_beams 1 --load_8bit --max_new_tokens 128; plus the shared
engine's --batch-size, --device, --limit, --overwrite (see `mgm.eval.runner`).

Each answer is one JSONL record `{question_id, prompt (the question text), text, answer_id, model_id,
metadata: {}}`. The question is sent as `<image>\\n<text>` in the conversation template.
"""
from __future__ import annotations


from mgm.eval.runner import VQA_FORMAT, runner_cli, vqa_items


build_parser, run, main = runner_cli(
    "python -m mgm.eval.model_vqa_loader", __doc__, VQA_FORMAT,
    lambda args: vqa_items(args.question_file, args.image_folder),
    conv_mode="llava_v1", max_new_tokens=128)


if __name__ == "__main__":
    main()
