#!/bin/bash
# MathVista testmini for MGM-34B (Yi-34B), conv mode chatml_direct:
# answers on every visible GPU (one CPU process without GPUs), merge, score.
# Environment overrides (CKPT, MODEL_PATH, DATA_ROOT, WORK_DIR, CONV_MODE, GPUS, BATCH_SIZE, EXTRA_ARGS,
# PYTHON, OPENAIKEY, OPENAIBASE, JUDGE_MODEL): see scripts/eval_common.sh.
# Re-running resumes the answers of an interrupted run.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
mgm_eval_init "MGM/MGM-34B" "chatml_direct"

ANSWERS="$DATA_ROOT/MathVista/answers/$CKPT"
mgm_run_shards "$ANSWERS" -m mgm.eval.model_math_vista \
    --model-path "$MODEL_PATH" \
    --question-file "$DATA_ROOT/MathVista/testmini.json" \
    --image-folder "$DATA_ROOT/MathVista" \
    --temperature 0 \
    --conv-mode "$CONV_MODE"

# Answer extraction: rules first, then the OpenAI-compatible judge (OPENAIKEY / OPENAIBASE / JUDGE_MODEL,
# or OPENAI_API_KEY / OPENAI_BASE_URL / MGM_JUDGE_MODEL) for what the rules cannot read.
mgm_judge_args
"$PYTHON" "$MGM_REPO_ROOT/mgm/eval/MathVista/extract_answer.py" \
    --output_file "$ANSWERS/merge.jsonl" "${MGM_JUDGE[@]}"

"$PYTHON" "$MGM_REPO_ROOT/mgm/eval/MathVista/calculate_score.py" \
    --output_file "$ANSWERS/merge.jsonl" \
    --score_file "$ANSWERS/score.jsonl" \
    --gt_file "$DATA_ROOT/MathVista/testmini.json"
