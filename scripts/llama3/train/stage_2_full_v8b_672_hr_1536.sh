#!/bin/bash
# MGM-8B-HD (LLaMA-3-8B-Instruct, LR 672 as 2x2 crops + HR 1536): stage 2 from the MGM-8B stage-1 adapter, 2 nodes (hostfile), ZeRO-3.
# Run from anywhere: bash scripts/llama3/train/stage_2_full_v8b_672_hr_1536.sh  (environment overrides: see scripts/train_common.sh)
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../train_common.sh"

# Stage 2 (MGM-8B-LLaMA-3-HD, HD: LR grid 2x2 + global view, HR 1536): global batch 4 per GPU x 2 accumulation x 16 GPUs = 128
mgm_stage2 hostfile \
    --deepspeed scripts/zero3.json \
    --model_name_or_path "$MODEL_ZOO/LLM/llama-3/Meta-Llama-3-8B-Instruct" \
    --version llama_3 \
    --pretrain_mm_mlp_adapter "$WORK_DIRS/MGM-8B-LLaMA-3-Pretrain/mm_projector.bin" \
    --image_size_aux 1536 \
    --image_grid 2 \
    --image_global True \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 2 \
    --learning_rate 2e-5 \
    --model_max_length 4096 \
    --output_dir "$WORK_DIRS/MGM-8B-LLaMA-3-HD"
