#!/bin/bash
# The embedded default: a tiny MGM built, trained (stage 1 + stage 2), evaluated (TextVQA, MME, MMBench with
# the real runners and scorers) and asked a question through the CLI, all on CPU in minutes; and the same
# with the high-res branch disabled (LR tower only, as LLaVA) for the side-by-side ablation.
#
#   bash scripts/tiny/run_all.sh            # ends with the summary table, also in $OUT/summary.md (+ .json, .png)
#
#   tiny zoo -> synthetic data -> for MGM and LR-only: stage 1 -> stage 2 -> TextVQA, MME, MMBench
#            -> one CLI answer on mgm/serve/examples/tiny_demo.png -> summary
#
# Each step runs the same entry points as the released recipes (scripts/tiny/train/*.sh over
# scripts/train_common.sh; scripts/llama/eval/{textvqa,mme,mmbench}.sh; python -m mgm.serve.cli), with its
# output in $OUT/logs/ and one progress line on the terminal.
#
# Environment overrides (defaults in brackets):
#   OUT          output root [work_dirs/MGM-Tiny]: model_zoo/, MGM/, LR-only/, logs/, textvqa/, summary.*
#   DATA         synthetic data [data/MGM-Tiny; data/MGM-Tiny-seed$SEED for SEED != 0]
#   SEED         seed of the tiny zoo, the data and training [0]
#   RUN_NAME     checkpoint name in the eval answer paths [basename of OUT]; the ablation adds "-LR"
#   N_TRAIN N_PRETRAIN N_EVAL   stage-2 samples, stage-1 captions, questions per benchmark [8000 1600 240]
#   STEPS1 STEPS2               optimizer steps of stage 1 / stage 2 [100 2000]
#   JITTER       0: draw the bottom-right mark at a fixed place (python -m mgm.zoo.synth --no-jitter) [1]
#   STEPS_MULT                  multiplies STEPS1 and STEPS2, e.g. 0.5 or 2 [1]
#   LR1 LR2 PROJ_LR2            learning rates of stage 1, stage 2 and stage 2's projector + mining [..]
#   BATCH        per-device batch [16]      WORKERS   DataLoader workers [1]
#   ABLATION     1: also train and evaluate the LR-only variant [1]
#   QUICK        1: a smoke run (few samples and steps; what the test suite runs) [0]
#   PYTHON       interpreter [.venv/bin/python when present, else python]
#   PROGRESS     auto | always | never: progress bars [auto = when stderr is a terminal; a terminal of
#                zero width, where a bar shows nothing, gets a plain line every 30 s instead]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
_abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ROOT/$1" ;; esac; }

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
: "${SEED:=0}"
: "${QUICK:=0}"
: "${ABLATION:=1}"
: "${PROGRESS:=auto}"
OUT="$(_abs "${OUT:-work_dirs/MGM-Tiny}")"
if [ "$SEED" = 0 ]; then DATA="$(_abs "${DATA:-data/MGM-Tiny}")"; else DATA="$(_abs "${DATA:-data/MGM-Tiny-seed$SEED}")"; fi
RUN_NAME="${RUN_NAME:-$(basename "$OUT")}"
ZOO="$OUT/model_zoo"
IMAGE_SIZE_AUX=128   # HR input side; the LR CLIP input stays 32 (8x8 tokens, 16x16 HR pixels each)

if [ "$QUICK" = 1 ]; then
    : "${N_TRAIN:=48}" "${N_PRETRAIN:=24}" "${N_EVAL:=8}" "${STEPS1:=2}" "${STEPS2:=3}" "${BATCH:=4}"
else
    : "${N_TRAIN:=8000}" "${N_PRETRAIN:=1600}" "${N_EVAL:=240}" "${STEPS1:=100}" "${STEPS2:=2000}" "${BATCH:=16}"
fi
: "${STEPS_MULT:=1}" "${LR1:=1e-3}" "${LR2:=3e-3}" "${PROJ_LR2:=3e-3}" "${WORKERS:=1}"
scale() { "$PYTHON" -c "import sys; print(max(1, round(float(sys.argv[1]) * float(sys.argv[2]))))" "$1" "$STEPS_MULT"; }
STEPS1="$(scale "$STEPS1")"
STEPS2="$(scale "$STEPS2")"

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error PYTHONWARNINGS=ignore
mkdir -p "$OUT/logs"
rm -f "$OUT/timings.json"

# step NAME LOGNAME -- CMD...: run one step quietly (output in $OUT/logs/LOGNAME.log) with a progress line.
step() {
    local name="$1" log="$2"; shift 2
    "$PYTHON" -m mgm.zoo.pipeline step --name "$name" --log "$OUT/logs/$log.log" --timings "$OUT/timings.json" \
        --progress "$PROGRESS" "$@"
}
TRAIN_STEP="\{'loss': "  # one Trainer log record per optimizer step (--logging_steps 1)

echo "MGM-Tiny: seed $SEED, $N_TRAIN instructions + $N_PRETRAIN captions, stage 1 $STEPS1 steps, stage 2 $STEPS2 steps" \
     "(batch $BATCH); outputs in $OUT" >&2
step "tiny zoo" zoo -- "$PYTHON" -m mgm.zoo.tiny --out "$ZOO" --families vicuna --seed "$SEED"
step "synthetic data" synth -- "$PYTHON" -m mgm.zoo.synth --out "$DATA" --seed "$SEED" --n-train "$N_TRAIN" \
    --n-pretrain "$N_PRETRAIN" --n-eval "$N_EVAL" --image-size "$IMAGE_SIZE_AUX" $([ "${JITTER:-1}" = 0 ] && echo --no-jitter)

# The variants, trained and evaluated side by side (one process each, the cores shared between them):
# LABEL:AUX:CKPT, AUX=1 with the ConvNeXt HR tower + patch info mining, AUX=0 with the CLIP LR tower only.
variants=("MGM:1:$RUN_NAME")
runs=(--run "MGM (HR+LR):$RUN_NAME:$OUT/MGM")
if [ "$ABLATION" = 1 ]; then
    variants+=("LR-only:0:$RUN_NAME-LR")
    runs+=(--run "LR-only:$RUN_NAME-LR:$OUT/LR-only")
fi
CORES="$(nproc 2>/dev/null || echo 2)"
THREADS=$(( CORES / ${#variants[@]} > 0 ? CORES / ${#variants[@]} : 1 ))
labels="$(for v in "${variants[@]}"; do printf '%s' "${v%%:*}, "; done)"
labels="${labels%, }"

# side_by_side NAME LOG_SUFFIX [step options] -- FUNCTION: run FUNCTION LABEL AUX CKPT for every variant at once.
side_by_side() {
    local name="$1" suffix="$2"; shift 2
    local -a opts=() cmd=() logs=()
    while [ "$1" != "--" ]; do opts+=("$1"); shift; done
    shift
    local fn="$1" v label aux ckpt
    for v in "${variants[@]}"; do
        IFS=: read -r label aux ckpt <<< "$v"
        "$fn" "$label" "$aux" "$ckpt"
        if [ ${#cmd[@]} -gt 0 ]; then cmd+=(":::"); fi
        cmd+=("${CMDLINE[@]}")
        logs+=(--log "$OUT/logs/${label}_$suffix.log")
    done
    "$PYTHON" -m mgm.zoo.pipeline step --name "$name ($labels)" "${logs[@]}" --timings "$OUT/timings.json" \
        --progress "$PROGRESS" "${opts[@]}" -- "${cmd[@]}"
}

# Command lines (into CMDLINE) of one variant's step: the tiny recipes and the released eval scripts.
train_env() {  # train_env LABEL AUX
    CMDLINE=(env ZOO="$ZOO" DATA="$DATA" OUT="$OUT/$1" AUX="$2" BATCH="$BATCH" WORKERS="$WORKERS" PYTHON="$PYTHON"
             OMP_NUM_THREADS="$THREADS")
}
stage1_cmd() {
    train_env "$1" "$2"
    CMDLINE+=(MAX_STEPS="$STEPS1" LR="$LR1" EXTRA_ARGS="--image_size_aux $IMAGE_SIZE_AUX --seed $SEED"
              bash scripts/tiny/train/stage_1.sh)
}
stage2_cmd() {
    train_env "$1" "$2"
    CMDLINE+=(MAX_STEPS="$STEPS2" LR="$LR2"
              EXTRA_ARGS="--image_size_aux $IMAGE_SIZE_AUX --seed $SEED --mm_projector_lr $PROJ_LR2"
              bash scripts/tiny/train/stage_2.sh)
}
eval_cmd() {  # eval_cmd LABEL AUX CKPT BENCHMARK
    CMDLINE=(env CKPT="$3" MODEL_PATH="$OUT/$1/stage2" DATA_ROOT="$DATA/MGM-Eval" WORK_DIR="$OUT" CONV_MODE=vicuna_v1
             GPUS=cpu PYTHON="$PYTHON" SPLIT=mmbench_dev_tiny OMP_NUM_THREADS="$THREADS"
             EXTRA_ARGS="--overwrite --max_new_tokens 8" bash "scripts/llama/eval/$4.sh")
}
textvqa_cmd() { eval_cmd "$@" textvqa; }
mme_cmd() { eval_cmd "$@" mme; }
mmbench_cmd() { eval_cmd "$@" mmbench; }

for v in "${variants[@]}"; do rm -rf "$OUT/${v%%:*}"; done
side_by_side "stage 1" stage1 --count "$TRAIN_STEP" --total "$STEPS1" -- stage1_cmd
side_by_side "stage 2" stage2 --count "$TRAIN_STEP" --total "$STEPS2" -- stage2_cmd
side_by_side "TextVQA" textvqa -- textvqa_cmd
side_by_side "MME" mme -- mme_cmd
side_by_side "MMBench" mmbench -- mmbench_cmd

# One chat turn pair on the bundled picture (3 blue circles, digit 7 top left, a cross bottom right).
DEMO="$ROOT/mgm/serve/examples/tiny_demo.png"
printf "What color are the shapes?\nWhat pattern fills the shapes?\nWhat digit is in the top left corner?\n" > "$OUT/logs/cli_questions.txt"
step "chat (CLI)" cli -- bash -c '"$0" -m mgm.serve.cli --model-path "$1" --image-file "$2" --device cpu --temperature 0 \
    --max-new-tokens 16 < "$3"' "$PYTHON" "$OUT/MGM/stage2" "$DEMO" "$OUT/logs/cli_questions.txt"

"$PYTHON" -m mgm.zoo.pipeline summary --out "$OUT" --data-root "$DATA/MGM-Eval" --work-dir "$OUT" \
    --split mmbench_dev_tiny --synth-meta "$DATA/synth_meta.json" --cli-answer "$OUT/logs/cli.log" \
    --cli-questions "$OUT/logs/cli_questions.txt" "${runs[@]}"
