#!/bin/bash
# MMMU test for MGM-7B-HD (Vicuna-7B), conv mode vicuna_v1:
# answers on every visible GPU (one CPU process without GPUs), merge, score.
# Environment overrides (CKPT, MODEL_PATH, DATA_ROOT, WORK_DIR, CONV_MODE, GPUS, BATCH_SIZE, EXTRA_ARGS,
# PYTHON): see scripts/eval_common.sh.
# Re-running resumes the answers of an interrupted run.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
mgm_eval_init "MGM/MGM-7B-HD" "vicuna_v1"

CONFIG="$MGM_REPO_ROOT/mgm/eval/MMMU/eval/configs/llava1.5.yaml"
# Test answers get their own folder (the original reused the validation one, which resuming would mix up).
ANSWERS="$WORK_DIR/MMMU/answers_test/$CKPT"
mgm_run_shards "$ANSWERS" "$MGM_REPO_ROOT/mgm/eval/MMMU/eval/run_llava.py" \
    --data_path "$DATA_ROOT/MMMU" \
    --config_path "$CONFIG" \
    --model_path "$MODEL_PATH" \
    --split "test" \
    --conv-mode "$CONV_MODE"

# Submission file for the MMMU test server.
"$PYTHON" "$MGM_REPO_ROOT/mgm/eval/MMMU/eval/convert_to_test.py" \
    --result_file "$ANSWERS/merge.jsonl" \
    --output_path "$WORK_DIR/MMMU/$CKPT/test.json"
