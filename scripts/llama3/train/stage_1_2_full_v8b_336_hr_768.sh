#!/bin/bash
# MGM-8B (LLaMA-3-8B-Instruct, LR 336 + HR 768): stage 1 then stage 2 on 2 nodes (hostfile; the original pointed at ../hostfile).
# Run from anywhere: bash scripts/llama3/train/stage_1_2_full_v8b_336_hr_768.sh  (environment overrides: see scripts/train_common.sh)
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../train_common.sh"

# Stage 1 (MGM-8B-LLaMA-3-Pretrain): global batch 16 per GPU x 1 accumulation x 16 GPUs = 256
mgm_stage1 hostfile \
    --deepspeed scripts/zero2_offload.json \
    --model_name_or_path "$MODEL_ZOO/LLM/llama-3/Meta-Llama-3-8B-Instruct" \
    --version llama_3 \
    --image_size_aux 768 \
    --per_device_train_batch_size 16 \
    --gradient_accumulation_steps 1 \
    --learning_rate 1e-3 \
    --model_max_length 2048 \
    --output_dir "$WORK_DIRS/MGM-8B-LLaMA-3-Pretrain"

# Stage 2 (MGM-8B-LLaMA-3, instruction tuning): global batch 8 per GPU x 1 accumulation x 16 GPUs = 128
mgm_stage2 hostfile \
    --deepspeed scripts/zero2_offload.json \
    --model_name_or_path "$MODEL_ZOO/LLM/llama-3/Meta-Llama-3-8B-Instruct" \
    --version llama_3 \
    --pretrain_mm_mlp_adapter "$WORK_DIRS/MGM-8B-LLaMA-3-Pretrain/mm_projector.bin" \
    --image_size_aux 768 \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 1 \
    --learning_rate 2e-5 \
    --model_max_length 2048 \
    --output_dir "$WORK_DIRS/MGM-8B-LLaMA-3"
