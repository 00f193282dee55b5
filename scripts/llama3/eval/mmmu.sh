#!/bin/bash
# MMMU validation for MGM-8B-LLaMA-3-HD, conv mode llama_3:
# answers on every visible GPU (one CPU process without GPUs), merge, score.
# Environment overrides (CKPT, MODEL_PATH, DATA_ROOT, WORK_DIR, CONV_MODE, GPUS, BATCH_SIZE, EXTRA_ARGS,
# PYTHON): see scripts/eval_common.sh.
# Re-running resumes the answers of an interrupted run.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
mgm_eval_init "MGM-8B-LLaMA-3-HD" "llama_3"

CONFIG="$MGM_REPO_ROOT/mgm/eval/MMMU/eval/configs/llava1.5.yaml"
ANSWERS="$WORK_DIR/MMMU/answers/$CKPT"
mgm_run_shards "$ANSWERS" "$MGM_REPO_ROOT/mgm/eval/MMMU/eval/run_llava.py" \
    --data_path "$DATA_ROOT/MMMU" \
    --config_path "$CONFIG" \
    --model_path "$MODEL_PATH" \
    --split "validation" \
    --conv-mode "$CONV_MODE"

"$PYTHON" "$MGM_REPO_ROOT/mgm/eval/MMMU/eval/eval.py" \
    --result_file "$ANSWERS/merge.jsonl" \
    --output_path "$WORK_DIR/MMMU/$CKPT/val.json"
