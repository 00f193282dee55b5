"""`python -m mgm.eval.model_vqa`: answers for open-ended JSONL benchmarks (MM-Vet style, long answers).

Same flags as the original (MGM_SPEC §6.1): --model-path --model-base --image-folder --question-file
(JSONL `{question_id, image, text}`) --answers-file --conv-mode llava_v1 --num-chunks --chunk-idx
--temperature 0.2 --top_p --num_beams 1; answers up to 1024 new tokens (the original's fixed limit,
here also settable with --max_new_tokens); plus the shared engine's --batch-size, --device, --limit,
--overwrite, --load_8bit (see `mgm.eval.runner`).

Output records: `{question_id, prompt, text, answer_id, model_id, metadata: {}}`.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from mgm.eval.runner import VQA_FORMAT, EvalModel, RunResult, add_common_args, run_benchmark, vqa_items, entry_point

FORMAT = dataclasses.replace(VQA_FORMAT, runner="model_vqa")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mgm.eval.model_vqa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, conv_mode="llava_v1", max_new_tokens=1024)
    return parser


def run(argv: Sequence[str] | None = None, model: EvalModel | None = None) -> RunResult:
    """Run the benchmark; `model` lets a caller reuse an already loaded model. Raises UserError on bad input."""
    args = build_parser().parse_args(argv)
    items = vqa_items(args.question_file, args.image_folder)
    return run_benchmark(items, FORMAT, args, question_source=f"--question-file {args.question_file}", model=model)


main = entry_point(run)


if __name__ == "__main__":
    main()
