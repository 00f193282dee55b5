#!/bin/bash
# MME for MGM-34B (Yi-34B), conv mode chatml_direct:
# one process (GPU 0 as the original, else the first visible GPU; CPU without GPUs), score.
# Environment overrides (CKPT, MODEL_PATH, DATA_ROOT, WORK_DIR, CONV_MODE, GPUS, BATCH_SIZE, EXTRA_ARGS,
# PYTHON): see scripts/eval_common.sh.
# Re-running resumes the answers of an interrupted run.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
mgm_eval_init "MGM/MGM-34B" "chatml_direct"

mgm_eval_mme single:0
