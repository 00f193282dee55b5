#!/bin/bash
# MM-Vet for MGM-7B-HD (Vicuna-7B), conv mode vicuna_v1:
# answers on every visible GPU (one CPU process without GPUs), merge, score.
# Environment overrides (CKPT, MODEL_PATH, DATA_ROOT, WORK_DIR, CONV_MODE, GPUS, BATCH_SIZE, EXTRA_ARGS,
# PYTHON): see scripts/eval_common.sh.
# Re-running resumes the answers of an interrupted run.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
mgm_eval_init "MGM/MGM-7B-HD" "vicuna_v1"

ANSWERS="$DATA_ROOT/mm-vet/answers/$CKPT"
mgm_run_shards "$ANSWERS" -m mgm.eval.model_vqa \
    --model-path "$MODEL_PATH" \
    --question-file "$DATA_ROOT/mm-vet/llava-mm-vet.jsonl" \
    --image-folder "$DATA_ROOT/mm-vet/images" \
    --temperature 0 \
    --conv-mode "$CONV_MODE"

mkdir -p "$DATA_ROOT/mm-vet/results/$CKPT"

# Input of the official MM-Vet GPT-4 grader.
"$PYTHON" "$MGM_REPO_ROOT/scripts/convert_mmvet_for_eval.py" \
    --src "$ANSWERS/merge.jsonl" \
    --dst "$DATA_ROOT/mm-vet/results/$CKPT/$CKPT.json"
