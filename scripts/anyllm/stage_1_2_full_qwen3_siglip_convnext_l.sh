#!/bin/bash
# MGM on your own LLM: Qwen3-8B + SigLIP-so400m/384 (LR) + ConvNeXt-L (HR), stage 1 then stage 2 on one node of
# 8 GPUs, with the released MGM hyper-parameters (global batch 256 / 128, lr 1e-3 / 2e-5, 2048 tokens).
# Stage 1 uses the `plain` caption format; stage 2 trains with Qwen3's own chat template (`chat_template`),
# which the checkpoint records, so the CLI, servers and evaluation render prompts with it.
# SigLIP-so400m/384 gives 27 x 27 = 729 LR tokens; --image_size_aux 864 (= 27 x 32) gives a 216 x 216 HR map,
# 8 x 8 HR cells per LR token, as 336/768 does for CLIP-L (24 tokens a side, 192 x 192).
# Run from anywhere: bash scripts/anyllm/stage_1_2_full_qwen3_siglip_convnext_l.sh
# Environment overrides: LLM (base LLM folder), the ones of scripts/train_common.sh (VISION_TOWER, VISION_TOWER_AUX, ...).
set -e
: "${MODEL_ZOO:=model_zoo}"
: "${LLM:=$MODEL_ZOO/LLM/Qwen3-8B}"
: "${VISION_TOWER:=$MODEL_ZOO/google/siglip-so400m-patch14-384}"
: "${VISION_TOWER_AUX=$MODEL_ZOO/OpenAI/openclip-convnext-large-d-320-laion2B-s29B-b131K-ft-soup}"
: "${RUN:=MGM-Qwen3-8B-SigLIP}"
source "$(dirname "${BASH_SOURCE[0]}")/../train_common.sh"

# Stage 1 (feature alignment): global batch 32 per GPU x 1 accumulation x 8 GPUs = 256
mgm_stage1 "" \
    --deepspeed scripts/zero2.json \
    --model_name_or_path "$LLM" \
    --version plain \
    --image_size_aux 864 \
    --per_device_train_batch_size 32 \
    --gradient_accumulation_steps 1 \
    --learning_rate 1e-3 \
    --model_max_length 2048 \
    --output_dir "$WORK_DIRS/$RUN-Pretrain"

# Stage 2 (instruction tuning with the LLM's own chat template): 16 per GPU x 1 x 8 GPUs = 128
mgm_stage2 "" \
    --deepspeed scripts/zero2.json \
    --model_name_or_path "$LLM" \
    --version chat_template \
    --pretrain_mm_mlp_adapter "$WORK_DIRS/$RUN-Pretrain/mm_projector.bin" \
    --image_size_aux 864 \
    --per_device_train_batch_size 16 \
    --gradient_accumulation_steps 1 \
    --learning_rate 2e-5 \
    --model_max_length 2048 \
    --output_dir "$WORK_DIRS/$RUN"
