#!/bin/bash
# MME for MGM-2B (Gemma-2B), conv mode gemma:
# one process (GPU 0 as the original, else the first visible GPU; CPU without GPUs), score.
# Environment overrides (CKPT, MODEL_PATH, DATA_ROOT, WORK_DIR, CONV_MODE, GPUS, BATCH_SIZE, EXTRA_ARGS,
# PYTHON): see scripts/eval_common.sh.
# Re-running resumes the answers of an interrupted run.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
mgm_eval_init "MGM/MGM-2B" "gemma"

ANSWERS="$DATA_ROOT/MME/answers/$CKPT.jsonl"
mgm_run_single "$ANSWERS" "0" -m mgm.eval.model_vqa_loader \
    --model-path "$MODEL_PATH" \
    --question-file "$DATA_ROOT/MME/llava_mme.jsonl" \
    --image-folder "$DATA_ROOT/MME/MME_Benchmark_release_version" \
    --temperature 0 \
    --conv-mode "$CONV_MODE"

# The MME kit's conversion + calculation (perception / cognition scores), in one command.
"$PYTHON" -m mgm.eval.eval_mme \
    --answers-file "$ANSWERS" \
    --mme-root "$DATA_ROOT/MME/MME_Benchmark_release_version" \
    --results-dir "$DATA_ROOT/MME/eval_tool/answers/$CKPT"
