#!/bin/bash
# MMBench for MGM-7B-HD (Vicuna-7B), conv mode vicuna_v1:
# one process (GPU 1 as the original, else the first visible GPU; CPU without GPUs), score.
# Environment overrides (CKPT, MODEL_PATH, DATA_ROOT, WORK_DIR, CONV_MODE, GPUS, BATCH_SIZE, EXTRA_ARGS,
# PYTHON, SPLIT): see scripts/eval_common.sh.
# Re-running resumes the answers of an interrupted run.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
mgm_eval_init "MGM/MGM-7B-HD" "vicuna_v1"

mgm_eval_mmbench single:1
