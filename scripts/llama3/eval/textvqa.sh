#!/bin/bash
# TextVQA for MGM-8B-LLaMA-3-HD, conv mode llama_3:
# answers on every visible GPU (one CPU process without GPUs), merge, score.
# Environment overrides (CKPT, MODEL_PATH, DATA_ROOT, WORK_DIR, CONV_MODE, GPUS, BATCH_SIZE, EXTRA_ARGS,
# PYTHON): see scripts/eval_common.sh.
# Re-running resumes the answers of an interrupted run.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
mgm_eval_init "MGM-8B-LLaMA-3-HD" "llama_3"

ANSWERS="$WORK_DIR/textvqa/answers/$CKPT"
mgm_run_shards "$ANSWERS" -m mgm.eval.model_vqa_loader \
    --model-path "$MODEL_PATH" \
    --question-file "$DATA_ROOT/textvqa/llava_textvqa_val_v051_ocr.jsonl" \
    --image-folder "$DATA_ROOT/textvqa/train_images" \
    --temperature 0 \
    --conv-mode "$CONV_MODE"

"$PYTHON" -m mgm.eval.eval_textvqa \
    --annotation-file "$DATA_ROOT/textvqa/TextVQA_0.5.1_val.json" \
    --result-file "$ANSWERS/merge.jsonl"
