#!/bin/bash
# MGM-7B-HD (Vicuna-7B-v1.5, LR 672 as 2x2 crops + HR 1536): stage 2 from the MGM-7B stage-1 adapter, 4 nodes (hostfile_4).
# Run from anywhere: bash scripts/llama/train/stage_2_full_v7b_672_hr_1536.sh  (environment overrides: see scripts/train_common.sh)
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../train_common.sh"

# Stage 2 (MGM-7B-HD, HD: LR grid 2x2 + global view, HR 1536): global batch 4 per GPU x 1 accumulation x 32 GPUs = 128
mgm_stage2 hostfile_4 \
    --deepspeed scripts/zero2.json \
    --model_name_or_path "$MODEL_ZOO/LLM/vicuna/7B-V1.5" \
    --version v1 \
    --pretrain_mm_mlp_adapter "$WORK_DIRS/MGM-7B-Pretrain/mm_projector.bin" \
    --image_size_aux 1536 \
    --image_grid 2 \
    --image_global True \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --learning_rate 2e-5 \
    --model_max_length 4096 \
    --output_dir "$WORK_DIRS/MGM-7B-HD"
