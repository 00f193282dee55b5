#!/bin/bash
# MathVista testmini for MGM-2B (Gemma-2B), conv mode gemma:
# answers on every visible GPU (one CPU process without GPUs), merge, score.
# Environment overrides (CKPT, MODEL_PATH, DATA_ROOT, WORK_DIR, CONV_MODE, GPUS, BATCH_SIZE, EXTRA_ARGS,
# PYTHON, OPENAIKEY, OPENAIBASE, JUDGE_MODEL): see scripts/eval_common.sh.
# Re-running resumes the answers of an interrupted run.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
mgm_eval_init "MGM/MGM-2B" "gemma"

mgm_eval_math_vista shards
