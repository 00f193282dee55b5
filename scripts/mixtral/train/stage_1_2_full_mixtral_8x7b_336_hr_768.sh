#!/bin/bash
# MGM-8x7B (Mixtral-8x7B-Instruct-v0.1, LR 336 + HR 768): stage 1 then stage 2 on 4 nodes (hostfile_4), ZeRO-3.
# Run from anywhere: bash scripts/mixtral/train/stage_1_2_full_mixtral_8x7b_336_hr_768.sh  (environment overrides: see scripts/train_common.sh)
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../train_common.sh"

# Stage 1 (MGM-8x7B-Pretrain): global batch 8 per GPU x 1 accumulation x 32 GPUs = 256
mgm_stage1 hostfile_4 \
    --deepspeed scripts/zero3.json \
    --model_name_or_path "$MODEL_ZOO/LLM/mixtral/Mixtral-8x7B-Instruct-v0.1" \
    --version plain \
    --image_size_aux 768 \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 1 \
    --learning_rate 1e-3 \
    --model_max_length 2048 \
    --output_dir "$WORK_DIRS/MGM-8x7B-Pretrain"

# Stage 2 (MGM-8x7B, instruction tuning): global batch 4 per GPU x 1 accumulation x 32 GPUs = 128
mgm_stage2 hostfile_4 \
    --deepspeed scripts/zero3.json \
    --model_name_or_path "$MODEL_ZOO/LLM/mixtral/Mixtral-8x7B-Instruct-v0.1" \
    --version mistral_instruct \
    --pretrain_mm_mlp_adapter "$WORK_DIRS/MGM-8x7B-Pretrain/mm_projector.bin" \
    --image_size_aux 768 \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --learning_rate 1e-5 \
    --model_max_length 2048 \
    --lr_multi "model.mm_projector:2,model.vlm_uni:2" \
    --output_dir "$WORK_DIRS/MGM-8x7B"
