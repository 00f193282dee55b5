#!/bin/bash
# Shared part of scripts/<family>/eval/*.sh (sourced, not run): settings, sharded launch, merge.
#
# Every eval script runs from the repository root like the original ones, and takes these
# environment overrides (so the same script runs a released checkpoint on 8 GPUs or a tiny one on CPU):
#   CKPT         checkpoint name used in answer paths          (script default, e.g. MGM/MGM-7B-HD)
#   MODEL_PATH   checkpoint folder                             (./work_dirs/$CKPT)
#   DATA_ROOT    benchmark data                                (./data/MGM-Eval)
#   WORK_DIR     answers/results of textvqa and MMMU           (./work_dirs)
#   CONV_MODE    conversation template                         (script default, e.g. vicuna_v1)
#   GPUS         "0,1,2,3" to use those GPUs, "cpu" for one CPU process
#                (default: $CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists, else cpu)
#   BATCH_SIZE   questions per generate call                   (runner default: automatic)
#   EXTRA_ARGS   more runner flags, e.g. "--max_new_tokens 8 --limit 20"
#   PYTHON       interpreter                                   (python)
# Answers are resumable: re-running a script after a crash answers only the missing questions.

MGM_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$MGM_REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

# mgm_eval_init DEFAULT_CKPT DEFAULT_CONV_MODE: fill the settings above and the GPU list.
mgm_eval_init() {
    CKPT="${CKPT:-$1}"
    CONV_MODE="${CONV_MODE:-$2}"
    MODEL_PATH="${MODEL_PATH:-./work_dirs/$CKPT}"
    DATA_ROOT="${DATA_ROOT:-./data/MGM-Eval}"
    WORK_DIR="${WORK_DIR:-./work_dirs}"
    PYTHON="${PYTHON:-python}"
    local gpus="${GPUS:-${CUDA_VISIBLE_DEVICES:-}}"
    if [ -z "$gpus" ] && command -v nvidia-smi >/dev/null 2>&1; then
        gpus="$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, -)"
    fi
    if [ -z "$gpus" ] || [ "$gpus" = "cpu" ]; then
        GPULIST=()
        CHUNKS=1
    else
        IFS=',' read -ra GPULIST <<< "$gpus"
        CHUNKS=${#GPULIST[@]}
    fi
    MGM_RUNNER_EXTRA=()
    if [ -n "${BATCH_SIZE:-}" ]; then MGM_RUNNER_EXTRA+=(--batch-size "$BATCH_SIZE"); fi
    if [ -n "${EXTRA_ARGS:-}" ]; then read -ra _extra <<< "$EXTRA_ARGS"; MGM_RUNNER_EXTRA+=("${_extra[@]}"); fi
}

# mgm_run_shards OUT_DIR RUNNER_ARGS...: one shard per GPU (one process on CPU) writing
# OUT_DIR/<CHUNKS>_<IDX>.jsonl, then OUT_DIR/merge.jsonl. Stops the script if a shard fails.
mgm_run_shards() {
    local out_dir="$1"; shift
    mkdir -p "$out_dir"
    local pids=() idx
    for idx in $(seq 0 $((CHUNKS-1))); do
        if [ ${#GPULIST[@]} -gt 0 ]; then
            CUDA_VISIBLE_DEVICES="${GPULIST[$idx]}" "$PYTHON" "$@" \
                --answers-file "$out_dir/${CHUNKS}_${idx}.jsonl" \
                --num-chunks "$CHUNKS" --chunk-idx "$idx" "${MGM_RUNNER_EXTRA[@]}" &
        else
            "$PYTHON" "$@" --answers-file "$out_dir/${CHUNKS}_${idx}.jsonl" \
                --num-chunks "$CHUNKS" --chunk-idx "$idx" "${MGM_RUNNER_EXTRA[@]}" &
        fi
        pids+=($!)
    done
    local failed=0 pid
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    if [ "$failed" -ne 0 ]; then
        echo "error: a shard failed (messages above); run this script again to resume the missing answers" >&2
        exit 1
    fi
    local output_file="$out_dir/merge.jsonl"
    > "$output_file"
    for idx in $(seq 0 $((CHUNKS-1))); do
        cat "$out_dir/${CHUNKS}_${idx}.jsonl" >> "$output_file"
    done
}

# mgm_run_single ANSWERS_FILE GPU RUNNER_ARGS...: one process; GPU = the id the original pinned
# ("" = all visible GPUs, as for Mixtral spread over them); a GPU that is not visible falls back to the first.
mgm_run_single() {
    local answers_file="$1" gpu="$2"; shift 2
    mkdir -p "$(dirname "$answers_file")"
    if [ ${#GPULIST[@]} -gt 0 ] && [ -n "$gpu" ]; then
        local pick="${GPULIST[0]}" g
        for g in "${GPULIST[@]}"; do [ "$g" = "$gpu" ] && pick="$g"; done
        CUDA_VISIBLE_DEVICES="$pick" "$PYTHON" "$@" --answers-file "$answers_file" "${MGM_RUNNER_EXTRA[@]}" \
            || { echo "error: the runner failed (messages above); run this script again to resume" >&2; exit 1; }
    else
        "$PYTHON" "$@" --answers-file "$answers_file" "${MGM_RUNNER_EXTRA[@]}" \
            || { echo "error: the runner failed (messages above); run this script again to resume" >&2; exit 1; }
    fi
}

# mgm_judge_args: MathVista judge flags from OPENAIKEY/OPENAIBASE/JUDGE_MODEL (empty ones left out;
# the judge then falls back to OPENAI_API_KEY / OPENAI_BASE_URL / MGM_JUDGE_MODEL).
mgm_judge_args() {
    MGM_JUDGE=()
    if [ -n "${OPENAIKEY:-}" ]; then MGM_JUDGE+=(--api_key "$OPENAIKEY"); fi
    if [ -n "${OPENAIBASE:-}" ]; then MGM_JUDGE+=(--api_base "$OPENAIBASE"); fi
    if [ -n "${JUDGE_MODEL:-}" ]; then MGM_JUDGE+=(--llm_engine "$JUDGE_MODEL"); fi
}
