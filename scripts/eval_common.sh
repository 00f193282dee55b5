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

# ---------------------------------------------------------------------------------------------------------
# One function per benchmark: the body every family's scripts/<family>/eval/<benchmark>.sh runs after
# mgm_eval_init. Each takes
#   LAUNCH           how the answer runner starts, as the family's original script did:
#                      shards    one shard per GPU (one process on CPU), merged into <answers>/merge.jsonl
#                      single    one process on all visible GPUs (Mixtral, spread over them)
#                      single:N  one process on GPU N (else the first visible GPU; CPU without GPUs)
#                    TextVQA, MM-Vet, MMMU and MathVista take all three (single writes <answers>/merge.jsonl
#                    itself); MME and MMBench answer in one process, so only single or single:N.
#   RUNNER_ARGS...   more runner flags of that family (e.g. --load_8bit True), passed just before --conv-mode.

# mgm_launch_gpu LAUNCH: MGM_GPU = the GPU argument of mgm_run_single for a single-process LAUNCH
# ("single" -> "" = all visible GPUs, "single:N" -> N); stops the script for any other LAUNCH.
mgm_launch_gpu() {
    case "$1" in
        single) MGM_GPU="" ;;
        single:*) MGM_GPU="${1#single:}" ;;
        *) echo "error: launch '$1' is not single or single:GPU" >&2; exit 1 ;;
    esac
}

# mgm_launch LAUNCH ANSWERS_DIR RUNNER_ARGS...: the answer step of a benchmark whose answers end up in
# ANSWERS_DIR/merge.jsonl: mgm_run_shards for "shards", else mgm_run_single straight into merge.jsonl.
mgm_launch() {
    local launch="$1" answers="$2"; shift 2
    if [ "$launch" = "shards" ]; then
        mgm_run_shards "$answers" "$@"
    else
        mgm_launch_gpu "$launch"
        mgm_run_single "$answers/merge.jsonl" "$MGM_GPU" "$@"
    fi
}

# mgm_vqa_args MODULE QUESTION_FILE IMAGE_FOLDER [RUNNER_ARGS...]: MGM_ARGS = the command line (after $PYTHON)
# of the answer runner MODULE that TextVQA, MME, MM-Vet and MathVista share, greedy, RUNNER_ARGS before --conv-mode.
mgm_vqa_args() {
    local module="$1" questions="$2" images="$3"; shift 3
    MGM_ARGS=(-m "$module" --model-path "$MODEL_PATH" --question-file "$questions" --image-folder "$images"
              --temperature 0 "$@" --conv-mode "$CONV_MODE")
}

# mgm_eval_textvqa LAUNCH [RUNNER_ARGS...]: TextVQA val answers into $WORK_DIR/textvqa/answers/$CKPT, then
# the accuracy (mgm.eval.eval_textvqa).
mgm_eval_textvqa() {
    local launch="$1"; shift
    local answers="$WORK_DIR/textvqa/answers/$CKPT"
    mgm_vqa_args mgm.eval.model_vqa_loader "$DATA_ROOT/textvqa/llava_textvqa_val_v051_ocr.jsonl" \
        "$DATA_ROOT/textvqa/train_images" "$@"
    mgm_launch "$launch" "$answers" "${MGM_ARGS[@]}"

    "$PYTHON" -m mgm.eval.eval_textvqa \
        --annotation-file "$DATA_ROOT/textvqa/TextVQA_0.5.1_val.json" \
        --result-file "$answers/merge.jsonl"
}

# mgm_eval_mmbench LAUNCH [RUNNER_ARGS...]: MMBench split $SPLIT (default mmbench_dev_20230712) answers into
# $DATA_ROOT/mmbench/answers/$SPLIT/$CKPT.jsonl, then the submission file in answers_upload/$SPLIT.
mgm_eval_mmbench() {
    mgm_launch_gpu "$1"; shift
    local split="${SPLIT:-mmbench_dev_20230712}"

    mgm_run_single "$DATA_ROOT/mmbench/answers/$split/$CKPT.jsonl" "$MGM_GPU" -m mgm.eval.model_vqa_mmbench \
        --model-path "$MODEL_PATH" \
        --question-file "$DATA_ROOT/mmbench/$split.tsv" \
        --single-pred-prompt \
        --temperature 0 \
        "$@" --conv-mode "$CONV_MODE"

    mkdir -p "$DATA_ROOT/mmbench/answers_upload/$split"

    "$PYTHON" -m mgm.eval.converters.mmbench \
        --annotation-file "$DATA_ROOT/mmbench/$split.tsv" \
        --result-dir "$DATA_ROOT/mmbench/answers/$split" \
        --upload-dir "$DATA_ROOT/mmbench/answers_upload/$split" \
        --experiment "$CKPT"
}

# mgm_eval_mme LAUNCH [RUNNER_ARGS...]: MME answers into $DATA_ROOT/MME/answers/$CKPT.jsonl, then the MME
# kit's conversion + calculation (perception / cognition scores) in one command (mgm.eval.eval_mme).
mgm_eval_mme() {
    mgm_launch_gpu "$1"; shift
    local answers="$DATA_ROOT/MME/answers/$CKPT.jsonl"
    mgm_vqa_args mgm.eval.model_vqa_loader "$DATA_ROOT/MME/llava_mme.jsonl" \
        "$DATA_ROOT/MME/MME_Benchmark_release_version" "$@"
    mgm_run_single "$answers" "$MGM_GPU" "${MGM_ARGS[@]}"

    "$PYTHON" -m mgm.eval.eval_mme \
        --answers-file "$answers" \
        --mme-root "$DATA_ROOT/MME/MME_Benchmark_release_version" \
        --results-dir "$DATA_ROOT/MME/eval_tool/answers/$CKPT"
}

# mgm_eval_mmvet LAUNCH [RUNNER_ARGS...]: MM-Vet answers into $DATA_ROOT/mm-vet/answers/$CKPT, then the input
# of the official MM-Vet GPT-4 grader, $DATA_ROOT/mm-vet/results/$CKPT/$CKPT.json.
mgm_eval_mmvet() {
    local launch="$1"; shift
    local answers="$DATA_ROOT/mm-vet/answers/$CKPT"
    mgm_vqa_args mgm.eval.model_vqa "$DATA_ROOT/mm-vet/llava-mm-vet.jsonl" \
        "$DATA_ROOT/mm-vet/images" "$@"
    mgm_launch "$launch" "$answers" "${MGM_ARGS[@]}"

    mkdir -p "$DATA_ROOT/mm-vet/results/$CKPT"

    "$PYTHON" -m mgm.eval.converters.mmvet \
        --src "$answers/merge.jsonl" \
        --dst "$DATA_ROOT/mm-vet/results/$CKPT/$CKPT.json"
}

# mgm_mmmu_answers LAUNCH ANSWERS_DIR SPLIT [RUNNER_ARGS...]: the MMMU answer step (run_llava.py with the
# llava1.5 config) of SPLIT ("validation" or "test") into ANSWERS_DIR.
mgm_mmmu_answers() {
    local launch="$1" answers="$2" split="$3"; shift 3
    mgm_launch "$launch" "$answers" "$MGM_REPO_ROOT/mgm/eval/MMMU/eval/run_llava.py" \
        --data_path "$DATA_ROOT/MMMU" \
        --config_path "$MGM_REPO_ROOT/mgm/eval/MMMU/eval/configs/llava1.5.yaml" \
        --model_path "$MODEL_PATH" \
        --split "$split" \
        "$@" --conv-mode "$CONV_MODE"
}

# mgm_eval_mmmu LAUNCH [RUNNER_ARGS...]: MMMU validation answers into $WORK_DIR/MMMU/answers/$CKPT, then the
# scores in $WORK_DIR/MMMU/$CKPT/val.json.
mgm_eval_mmmu() {
    local launch="$1"; shift
    mgm_mmmu_answers "$launch" "$WORK_DIR/MMMU/answers/$CKPT" "validation" "$@"

    "$PYTHON" "$MGM_REPO_ROOT/mgm/eval/MMMU/eval/eval.py" \
        --result_file "$WORK_DIR/MMMU/answers/$CKPT/merge.jsonl" \
        --output_path "$WORK_DIR/MMMU/$CKPT/val.json"
}

# mgm_eval_mmmu_test LAUNCH [RUNNER_ARGS...]: MMMU test answers into $WORK_DIR/MMMU/answers_test/$CKPT (their
# own folder: the original reused the validation one, which resuming would mix up), then the submission file
# for the MMMU test server, $WORK_DIR/MMMU/$CKPT/test.json.
mgm_eval_mmmu_test() {
    local launch="$1"; shift
    mgm_mmmu_answers "$launch" "$WORK_DIR/MMMU/answers_test/$CKPT" "test" "$@"

    "$PYTHON" "$MGM_REPO_ROOT/mgm/eval/MMMU/eval/convert_to_test.py" \
        --result_file "$WORK_DIR/MMMU/answers_test/$CKPT/merge.jsonl" \
        --output_path "$WORK_DIR/MMMU/$CKPT/test.json"
}

# mgm_eval_math_vista LAUNCH [RUNNER_ARGS...]: MathVista testmini answers into $DATA_ROOT/MathVista/answers/$CKPT,
# answer extraction (rules first, then the OpenAI-compatible judge: OPENAIKEY / OPENAIBASE / JUDGE_MODEL, or
# OPENAI_API_KEY / OPENAI_BASE_URL / MGM_JUDGE_MODEL, for what the rules cannot read), then the scores.
mgm_eval_math_vista() {
    local launch="$1"; shift
    local answers="$DATA_ROOT/MathVista/answers/$CKPT"
    mgm_vqa_args mgm.eval.model_math_vista "$DATA_ROOT/MathVista/testmini.json" \
        "$DATA_ROOT/MathVista" "$@"
    mgm_launch "$launch" "$answers" "${MGM_ARGS[@]}"

    mgm_judge_args
    "$PYTHON" "$MGM_REPO_ROOT/mgm/eval/MathVista/extract_answer.py" \
        --output_file "$answers/merge.jsonl" "${MGM_JUDGE[@]}"

    "$PYTHON" "$MGM_REPO_ROOT/mgm/eval/MathVista/calculate_score.py" \
        --output_file "$answers/merge.jsonl" \
        --score_file "$answers/score.jsonl" \
        --gt_file "$DATA_ROOT/MathVista/testmini.json"
}
