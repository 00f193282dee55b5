#!/bin/bash
# MGM-2B (Gemma-2B-it, LR 336 + HR 768): stage 1 then stage 2 on one node of 8 GPUs.
# Run from anywhere: bash scripts/gemma/train/stage_1_2_full_gemma_v2b_336_hr_768.sh  (environment overrides: see scripts/train_common.sh)
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../train_common.sh"

# Stage 1 (MGM-2B-Pretrain): global batch 8 per GPU x 4 accumulation x 8 GPUs = 256
mgm_stage1 "" \
    --deepspeed scripts/zero2_offload.json \
    --model_name_or_path "$MODEL_ZOO/LLM/gemma/gemma-2b-it" \
    --version gemma \
    --image_size_aux 768 \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 4 \
    --learning_rate 1e-3 \
    --model_max_length 2048 \
    --output_dir "$WORK_DIRS/MGM-2B-Pretrain"

# Stage 2 (MGM-2B, instruction tuning): global batch 8 per GPU x 2 accumulation x 8 GPUs = 128
mgm_stage2 "" \
    --deepspeed scripts/zero2.json \
    --model_name_or_path "$MODEL_ZOO/LLM/gemma/gemma-2b-it" \
    --version gemma \
    --pretrain_mm_mlp_adapter "$WORK_DIRS/MGM-2B-Pretrain/mm_projector.bin" \
    --image_size_aux 768 \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 2 \
    --learning_rate 2e-5 \
    --model_max_length 2048 \
    --output_dir "$WORK_DIRS/MGM-2B"
