#!/bin/bash
# Tiny MGM stage 2 (instruction tuning) on CPU: LLM + projector + mining modules learn, starting from
# $OUT/stage1/mm_projector.bin; writes a full checkpoint to $OUT/stage2, ready for
# `python -m mgm.serve.cli --model-path $OUT/stage2`. Environment overrides: see tiny_common.sh.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/tiny_common.sh"
tiny_stage2 \
    --learning_rate "${LR:-5e-4}" \
    --output_dir "$OUT/stage2"
