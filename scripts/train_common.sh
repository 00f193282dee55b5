# Shared part of the MGM training recipes; sourced by scripts/<family>/train/*.sh (docs/original.md#training).
#
# Every run is `deepspeed [--hostfile F] mgm/train/train_mem.py` with the flags common to all released
# recipes (below) plus the recipe's own flags; a flag given later wins, so a recipe can override any
# common one.
#
# Global batch size = per-device batch (--per_device_train_batch_size)
#                   x gradient accumulation (--gradient_accumulation_steps)
#                   x number of GPUs (8 per node: no hostfile = 1 node = 8 GPUs, hostfile = 2 nodes = 16,
#                     hostfile_4 = 4 nodes = 32).
# The released recipes use 256 for stage 1 and 128 for stage 2; with fewer GPUs raise the accumulation
# steps to keep the global batch.
#
# Environment overrides:
#   LAUNCHER      command that starts training (default: deepspeed; e.g. "python" or "torchrun --nproc_per_node 8")
#   HOSTFILE      replaces the recipe's hostfile; HOSTFILE="" runs on this node only
#   MODEL_ZOO     folder of the LLMs and towers (default: model_zoo)
#   DATA_ROOT     folder of MGM-Pretrain / MGM-Finetune (default: data)
#   WORK_DIRS     where outputs go (default: work_dirs)
#   VISION_TOWER, VISION_TOWER_AUX   tower folders (default: the released ones under $MODEL_ZOO/OpenAI);
#                 VISION_TOWER_AUX="" trains without the HR tower
#   REPORT_TO     logging integration (default: wandb; dropped with a warning when not installed)
#   EXTRA_ARGS    extra flags appended to every run

MGM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$MGM_ROOT" || exit 1  # recipes use paths relative to the repository root

: "${LAUNCHER:=deepspeed}"
: "${MODEL_ZOO:=model_zoo}"
: "${DATA_ROOT:=data}"
: "${WORK_DIRS:=work_dirs}"
: "${REPORT_TO:=wandb}"
: "${VISION_TOWER:=$MODEL_ZOO/OpenAI/clip-vit-large-patch14-336}"
: "${VISION_TOWER_AUX=$MODEL_ZOO/OpenAI/openclip-convnext-large-d-320-laion2B-s29B-b131K-ft-soup}"

# mgm_train HOSTFILE [flags...]: one training run with the common flags.
mgm_train() {
    local hostfile="$1"
    shift
    if [ "${HOSTFILE+set}" = set ]; then hostfile="$HOSTFILE"; fi
    local -a launch
    read -r -a launch <<< "$LAUNCHER"
    if [ -n "$hostfile" ] && [[ "${launch[0]}" == *deepspeed* ]]; then
        launch+=(--hostfile "$hostfile")
    fi
    local -a aux=()
    if [ -n "$VISION_TOWER_AUX" ]; then aux=(--vision_tower_aux "$VISION_TOWER_AUX"); fi
    local -a extra
    read -r -a extra <<< "${EXTRA_ARGS:-}"
    "${launch[@]}" mgm/train/train_mem.py \
        --vision_tower "$VISION_TOWER" "${aux[@]}" \
        --mm_projector_type mlp2x_gelu \
        --mm_vision_select_layer -2 \
        --mm_use_im_start_end False \
        --mm_use_im_patch_token False \
        --bf16 True \
        --tf32 True \
        --num_train_epochs 1 \
        --per_device_eval_batch_size 4 \
        --evaluation_strategy "no" \
        --save_strategy "steps" \
        --save_total_limit 1 \
        --weight_decay 0. \
        --warmup_ratio 0.03 \
        --lr_scheduler_type "cosine" \
        --logging_steps 1 \
        --gradient_checkpointing True \
        --dataloader_num_workers 4 \
        --lazy_preprocess True \
        --report_to "$REPORT_TO" \
        "$@" "${extra[@]}"
}

# mgm_stage1 HOSTFILE [flags...]: feature alignment; only the projector and the mining modules learn.
mgm_stage1() {
    local hostfile="$1"
    shift
    mgm_train "$hostfile" \
        --tune_mm_mlp_adapter True \
        --data_path "$DATA_ROOT/MGM-Pretrain/mgm_pretrain.json" \
        --image_folder "$DATA_ROOT/MGM-Pretrain" \
        --save_steps 24000 \
        "$@"
}

# mgm_stage2 HOSTFILE [flags...]: instruction tuning; the LLM learns too.
mgm_stage2() {
    local hostfile="$1"
    shift
    mgm_train "$hostfile" \
        --data_path "$DATA_ROOT/MGM-Finetune/mgm_instruction.json" \
        --image_folder "$DATA_ROOT/MGM-Finetune" \
        --image_aspect_ratio pad \
        --group_by_modality_length True \
        --save_steps 1000 \
        "$@"
}
