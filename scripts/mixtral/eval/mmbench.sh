#!/bin/bash
# MMBench for MGM-8x7B (Mixtral-8x7B), conv mode mistral_instruct:
# one process on all visible GPUs (the model is spread over them), score.
# Environment overrides (CKPT, MODEL_PATH, DATA_ROOT, WORK_DIR, CONV_MODE, GPUS, BATCH_SIZE, EXTRA_ARGS,
# PYTHON, SPLIT): see scripts/eval_common.sh.
# Re-running resumes the answers of an interrupted run.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
mgm_eval_init "MGM/MGM-8x7B" "mistral_instruct"

SPLIT="${SPLIT:-mmbench_dev_20230712}"

mgm_run_single "$DATA_ROOT/mmbench/answers/$SPLIT/$CKPT.jsonl" "" -m mgm.eval.model_vqa_mmbench \
    --model-path "$MODEL_PATH" \
    --question-file "$DATA_ROOT/mmbench/$SPLIT.tsv" \
    --single-pred-prompt \
    --temperature 0 \
    --conv-mode "$CONV_MODE"

mkdir -p "$DATA_ROOT/mmbench/answers_upload/$SPLIT"

"$PYTHON" "$MGM_REPO_ROOT/scripts/convert_mmbench_for_submission.py" \
    --annotation-file "$DATA_ROOT/mmbench/$SPLIT.tsv" \
    --result-dir "$DATA_ROOT/mmbench/answers/$SPLIT" \
    --upload-dir "$DATA_ROOT/mmbench/answers_upload/$SPLIT" \
    --experiment "$CKPT"
