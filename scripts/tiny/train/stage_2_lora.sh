#!/bin/bash
# Tiny MGM stage 2 with LoRA on CPU: LoRA adapters on the LLM + projector + mining modules, from
# $OUT/stage1/mm_projector.bin; writes the adapter folder $OUT/stage2_lora, then merges it into a full
# checkpoint $OUT/stage2_lora_merged (skip the merge with MERGE=0). Environment overrides: see tiny_common.sh.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/tiny_common.sh"
tiny_stage2 \
    --lora_enable True \
    --lora_r 16 \
    --lora_alpha 32 \
    --learning_rate "${LR:-1e-3}" \
    --output_dir "$OUT/stage2_lora"

if [ "${MERGE:-1}" = 1 ]; then
    "$PYTHON" scripts/merge_lora_weights.py \
        --model-path "$OUT/stage2_lora" \
        --model-base "$LLM" \
        --save-model-path "$OUT/stage2_lora_merged"
fi
