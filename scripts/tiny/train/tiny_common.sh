# Shared part of the tiny CPU recipes (scripts/tiny/train/*.sh): the real recipes' code path and flags
# (scripts/train_common.sh), on the tiny model zoo and a small synthetic data set, in fp32 on the CPU.
#
# Environment overrides (defaults in brackets):
#   ZOO         tiny model zoo [model_zoo/tiny]; built with `python -m mgm.zoo.tiny` when missing
#   DATA        data folder holding stage1.json, stage2.json and images/ [data/MGM-Tiny]
#   OUT         output root [work_dirs/MGM-Tiny]: stage1/, stage2/, stage2_lora/, stage2_lora_merged/
#   MAX_STEPS   optimizer steps per stage [-1 = EPOCHS epochs]
#   EPOCHS      epochs per stage when MAX_STEPS is -1 [1]
#   BATCH       per-device batch [8]    ACCUM   gradient accumulation [1]
#   FAMILY      tiny LLM: vicuna, llama3, gemma, mistral, mixtral or yi [vicuna]
#   AUX         1: HR tower + patch info mining [1]; 0: LR tower only (the LLaVA-style ablation)
#   WORKERS     DataLoader workers [2]
#   PYTHON      Python interpreter [python]
#   LAUNCHER    [$PYTHON]; e.g. "deepspeed --num_gpus 2" with DS_CONFIG=scripts/zero2.json
#   DS_CONFIG   DeepSpeed config for LAUNCHER=deepspeed runs [none]
#   EXTRA_ARGS  more flags for every run
# Global batch = BATCH x ACCUM x number of processes.

# Relative ZOO / DATA / OUT are taken from the caller's working directory; the defaults from the repository.
_tiny_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
_abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
ZOO="$(_abs "${ZOO:-$_tiny_root/model_zoo/tiny}")"
DATA="$(_abs "${DATA:-$_tiny_root/data/MGM-Tiny}")"
OUT="$(_abs "${OUT:-$_tiny_root/work_dirs/MGM-Tiny}")"
: "${MAX_STEPS:=-1}"
: "${EPOCHS:=1}"
: "${BATCH:=8}"
: "${ACCUM:=1}"
: "${FAMILY:=vicuna}"
: "${AUX:=1}"
: "${WORKERS:=2}"
: "${PYTHON:=python}"
: "${LAUNCHER:=$PYTHON}"
: "${DS_CONFIG:=}"
export LAUNCHER

VISION_TOWER="$ZOO/OpenAI/clip-vit-tiny-patch4-32"
if [ "$AUX" = 1 ]; then
    VISION_TOWER_AUX="$ZOO/OpenAI/openclip-convnext-tiny"
else
    VISION_TOWER_AUX=""
fi
MODEL_ZOO="$ZOO"
HOSTFILE=""
REPORT_TO=none
export VISION_TOWER VISION_TOWER_AUX MODEL_ZOO HOSTFILE REPORT_TO
source "$(dirname "${BASH_SOURCE[0]}")/../../train_common.sh"  # also moves to the repository root

LLM="$ZOO/LLM/$FAMILY"
case "$FAMILY" in  # stage-1 / stage-2 --version of the family's released recipe
    vicuna) VERSION_1=plain; VERSION_2=v1 ;;
    llama3) VERSION_1=llama_3; VERSION_2=llama_3 ;;
    gemma) VERSION_1=gemma; VERSION_2=gemma ;;
    mistral|mixtral) VERSION_1=plain; VERSION_2=mistral_instruct ;;
    yi) VERSION_1=plain; VERSION_2=chatml_direct ;;
    *) echo "error: FAMILY=$FAMILY is unknown; valid: vicuna llama3 gemma mistral mixtral yi" >&2; exit 2 ;;
esac

# The tiny zoo builds in seconds and is reused when present.
if [ ! -f "$ZOO/manifest.json" ]; then
    "$PYTHON" -m mgm.zoo.tiny --out "$ZOO" || exit 1
fi

require_data() {  # require_data FILE
    if [ ! -f "$DATA/$1" ]; then
        echo "error: $DATA/$1 not found; write the synthetic data set first (python -m mgm.zoo.synth --out $DATA)" \
             "or point DATA at a folder with stage1.json, stage2.json and images/" >&2
        exit 2
    fi
}

# tiny_run [flags...]: mgm_train with the tiny sizes; flags given later win over the common ones.
tiny_run() {
    local -a ds=()
    if [ -n "$DS_CONFIG" ]; then ds=(--deepspeed "$DS_CONFIG"); fi
    mgm_train "" \
        --model_name_or_path "$LLM" \
        --image_size_aux 64 \
        --bf16 False \
        --tf32 False \
        --gradient_checkpointing False \
        --dataloader_num_workers "$WORKERS" \
        --num_train_epochs "$EPOCHS" \
        --max_steps "$MAX_STEPS" \
        --per_device_train_batch_size "$BATCH" \
        --gradient_accumulation_steps "$ACCUM" \
        --model_max_length 512 \
        --save_steps 1000 \
        --report_to none \
        "${ds[@]}" \
        "$@"
}

# tiny_stage2 [flags...]: the stage-2 run (instruction tuning from $OUT/stage1/mm_projector.bin) with the
# script's own flags (learning rate, output folder, LoRA) appended.
tiny_stage2() {
    require_data stage2.json
    tiny_run \
        --version "$VERSION_2" \
        --pretrain_mm_mlp_adapter "$OUT/stage1/mm_projector.bin" \
        --data_path "$DATA/stage2.json" \
        --image_folder "$DATA" \
        --image_aspect_ratio pad \
        --group_by_modality_length True \
        "$@"
}
