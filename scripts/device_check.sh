#!/usr/bin/env bash
# What a CPU machine cannot check, in one run of at most 8 minutes on a machine with a CUDA GPU:
#   gpu-tests   every test marked `gpu` (tests/test_gpu_checks.py and the CUDA cases of the others)
#   goldens     float32 / float16 / bfloat16 on the GPU against the CPU float32 golden, within tolerance
#   flash-attn  use_flash_attn=True selects flash_attention_2 when flash-attn is installed, else falls back to SDPA
#   deepspeed   a two-rank ZeRO-2 and ZeRO-3 training step (needs two GPUs)
#   bench       a short inference benchmark: encode, prefill and decode ms/token on the GPU vs the CPU, same run
#   vllm        vLLM on the GPU (tests/test_integration_vllm.py) in a vLLM environment, when one installs
# Each part runs under its own time limit, and inside what is left of the whole budget; a part that cannot
# run (no GPU, one GPU, vLLM not installable, no time left) is skipped with the reason. The last line is
# the summary, e.g. `device_check: 5 passed, 0 failed, 1 skipped (deepspeed: needs 2 GPUs, found 1) in 312 s`;
# the exit status is 1 when a part failed, else 0.
#
# Usage: bash scripts/device_check.sh            (from anywhere; runs in the repository root)
# Environment:
#   PYTHON            interpreter with mgm installed [.venv/bin/python when present, else python3]
#   BUDGET_S          whole-run budget in seconds [480]
#   VLLM_VENV         an existing vLLM environment to use [none: try to build one]
#   VLLM_INSTALL      1: build the vLLM environment when none is given (scripts/setup_vllm_venv.sh) [1]
#   DEVICE_CHECK_LOG  folder for each part's full log [$TMPDIR/mgm-device-check]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
: "${BUDGET_S:=480}"
: "${VLLM_INSTALL:=1}"
: "${DEVICE_CHECK_LOG:=${TMPDIR:-/tmp}/mgm-device-check}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false GRADIO_ANALYTICS_ENABLED=False PYTHONUNBUFFERED=1
mkdir -p "$DEVICE_CHECK_LOG"

START=$SECONDS
PASSED=0 FAILED=0 SKIPPED=0
NOTES=()

left() { echo $((BUDGET_S - (SECONDS - START))); }
record() {  # record STATUS PART [REASON]
    local status="$1" part="$2" reason="${3:-}"
    case "$status" in
        passed) PASSED=$((PASSED + 1)); echo "== $part: passed" ;;
        failed) FAILED=$((FAILED + 1)); NOTES+=("$part: FAILED${reason:+, $reason}")
                echo "== $part: FAILED${reason:+ ($reason)}; log $DEVICE_CHECK_LOG/$part.log" ;;
        skipped) SKIPPED=$((SKIPPED + 1)); NOTES+=("$part: $reason"); echo "== $part: skipped ($reason)" ;;
    esac
}
# budget PART WANTED: set T to the seconds PART may use (WANTED, or what is left of the whole budget less
# a reserve for the summary); records a skip and fails when less than a minute would remain.
budget() {
    local part="$1" wanted="$2" avail
    avail=$(( $(left) - 10 ))
    if (( avail < 60 )); then
        record skipped "$part" "no time left in the ${BUDGET_S} s budget"
        return 1
    fi
    T=$(( wanted < avail ? wanted : avail ))
}
# pytest_part PART SECONDS PYTHON ARGS...: run pytest, classify by its exit status and summary line.
pytest_part() {
    local part="$1" seconds="$2" python="$3"; shift 3
    local log="$DEVICE_CHECK_LOG/$part.log" rc summary
    echo "== $part: $python -m pytest $* (at most ${seconds} s)"
    timeout --kill-after=10 "$seconds" "$python" -m pytest -q -rs -p no:cacheprovider "$@" >"$log" 2>&1
    rc=$?
    summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|deselected|error)' "$log" | tail -1 | tr -d '=')
    grep -E '^(SKIPPED|FAILED|ERROR) ' "$log" | head -20 | sed 's/^/   /'
    if (( rc == 124 || rc == 137 )); then
        record failed "$part" "timed out after ${seconds} s"
    elif (( rc == 5 )) || { (( rc == 0 )) && ! grep -qE '[0-9]+ passed' <<<"$summary"; }; then
        local why
        # the reason that skipped the most tests (a module skipped for another reason counts 1)
        why=$(grep -E '^SKIPPED \[[0-9]+\] ' "$log" | sort -t'[' -k2 -n -r | head -1 \
            | sed -E 's/^SKIPPED \[[0-9]+\] [^:]+:[0-9]+: //')
        record skipped "$part" "${why:-no test ran}"
    elif (( rc == 0 )); then
        echo "   ${summary# }"
        record passed "$part"
    else
        tail -25 "$log" | sed 's/^/   | /'
        record failed "$part" "${summary:-exit $rc}"
    fi
}

echo "device_check: $(date -u '+%Y-%m-%d %H:%M UTC'), budget ${BUDGET_S} s, python $PYTHON, logs $DEVICE_CHECK_LOG"
GPU_INFO=$("$PYTHON" - <<'EOF' 2>&1
import torch
if not torch.cuda.is_available():
    print("0 torch", torch.__version__, "sees no CUDA device")
else:
    n = torch.cuda.device_count()
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(n))
    print(n, f"torch {torch.__version__}, CUDA {torch.version.cuda}: {names}")
EOF
)
if ! [[ "$GPU_INFO" =~ ^[0-9]+\  ]]; then
    echo "$GPU_INFO" | tail -5
    echo "device_check: 0 passed, 1 failed, 0 skipped (python: cannot import torch with $PYTHON) in $((SECONDS - START)) s"
    exit 1
fi
GPUS=${GPU_INFO%% *}
echo "   ${GPU_INFO#* }"
NO_GPU="no CUDA GPU"

# --- gpu-marked tests, except the ones the parts below run on their own ------------------------------
if (( GPUS == 0 )); then
    record skipped gpu-tests "$NO_GPU"
elif budget gpu-tests 150; then
    pytest_part gpu-tests "$T" "$PYTHON" -m gpu tests --ignore=tests/test_gpu_checks.py \
        --ignore=tests/test_integration_vllm.py
fi

# --- dtype goldens and flash-attention ----------------------------------------------------------------
if (( GPUS == 0 )); then
    record skipped goldens "$NO_GPU"
    record skipped flash-attn "$NO_GPU"
else
    if budget goldens 120; then
        pytest_part goldens "$T" "$PYTHON" tests/test_gpu_checks.py -k dtype -s
    fi
    if budget flash-attn 60; then
        pytest_part flash-attn "$T" "$PYTHON" tests/test_gpu_checks.py -k flash -s
    fi
fi

# --- two-rank DeepSpeed ZeRO-2 / ZeRO-3 ---------------------------------------------------------------
if (( GPUS < 2 )); then
    record skipped deepspeed "needs 2 GPUs, found $GPUS"
elif ! "$PYTHON" -c "import deepspeed" >/dev/null 2>&1; then
    record skipped deepspeed "deepspeed is not installed (pip install -e '.[train]')"
elif budget deepspeed 150; then
    pytest_part deepspeed "$T" "$PYTHON" tests/test_train_deepspeed.py -m slow \
        -k "zero2_two_processes or zero3_stage_two"
fi

# --- a short inference benchmark: GPU against CPU, same run -------------------------------------------
if (( GPUS == 0 )); then
    record skipped bench "$NO_GPU"
elif budget bench 90; then
    echo "== bench: tiny MGM checkpoint, encode / prefill / decode on cuda (bf16 or fp16) and cpu (float32)"
    if timeout --kill-after=10 "$T" "$PYTHON" - >"$DEVICE_CHECK_LOG/bench.log" 2>&1 <<'EOF'; then
import statistics, tempfile, time
import torch
from mgm.mm_utils import tokenizer_image_token
from mgm.model.builder import default_dtype, load_pretrained_model
from mgm.zoo.tiny import build_tiny_zoo

path = build_tiny_zoo(tempfile.mkdtemp(), seed=0, families=["vicuna"])["checkpoints"]["MGM-Tiny-Vicuna"]["path"]
STEPS = 32

def clock(fn, device, repeats=5):
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)

rows = {}
for device in ("cuda", "cpu"):
    dtype = default_dtype(device)
    tok, model, _, _ = load_pretrained_model(path, None, "MGM-Tiny-Vicuna", device=device, dtype=dtype)
    side, aux_side = model.get_vision_tower().config.image_size, model.mgm_settings.image_size_aux
    images = torch.randn(1, 3, side, side).to(device, dtype)
    aux = torch.randn(1, 3, aux_side, aux_side).to(device, dtype)
    ids = tokenizer_image_token("USER: <image>\nDescribe it. ASSISTANT:", tok, return_tensors="pt")[None].to(device)
    with torch.no_grad():
        gen = lambda n: model.generate(ids, images=images, images_aux=aux, do_sample=False, max_new_tokens=n,
                                       min_new_tokens=n, pad_token_id=tok.pad_token_id)
        gen(2)  # warm-up
        encode = clock(lambda: model.encode_images(images, aux), device)
        prefill = clock(lambda: gen(1), device)
        full = clock(lambda: gen(STEPS + 1), device)
    rows[device] = (str(dtype).replace("torch.", ""), encode * 1e3, prefill * 1e3, (full - prefill) / STEPS * 1e3)
    print(f"{device:4s} {rows[device][0]:8s} encode {rows[device][1]:.2f} ms, prefill {rows[device][2]:.2f} ms, "
          f"decode {rows[device][3]:.2f} ms/token")
print(f"cuda/cpu ratios: encode {rows['cuda'][1] / rows['cpu'][1]:.2f}x, prefill {rows['cuda'][2] / rows['cpu'][2]:.2f}x, "
      f"decode {rows['cuda'][3] / rows['cpu'][3]:.2f}x ({torch.cuda.get_device_name(0)}; tiny shapes: launch-bound)")
EOF
        grep -E '^(cuda|cpu)' "$DEVICE_CHECK_LOG/bench.log" | sed 's/^/   /'
        record passed bench
    else
        tail -15 "$DEVICE_CHECK_LOG/bench.log" | sed 's/^/   | /'
        record failed bench "see $DEVICE_CHECK_LOG/bench.log"
    fi
fi

# --- vLLM on the GPU ----------------------------------------------------------------------------------
if (( GPUS == 0 )); then
    record skipped vllm "$NO_GPU"
else
    VLLM_PY="" INSTALL_SKIPPED=0
    if [[ -n "${VLLM_VENV:-}" && -x "$VLLM_VENV/bin/python" ]]; then
        VLLM_PY="$VLLM_VENV/bin/python"
    elif "$PYTHON" -c "import vllm" >/dev/null 2>&1; then
        VLLM_PY="$PYTHON"
    elif [[ "$VLLM_INSTALL" != 1 ]]; then
        record skipped vllm "vLLM is not installed here (VLLM_INSTALL=0; VLLM_VENV=DIR names an environment)"
        INSTALL_SKIPPED=1
    elif ! budget vllm-install 120; then
        INSTALL_SKIPPED=1
    else
        echo "== vllm: building a vLLM environment (at most ${T} s)"
        if timeout --kill-after=10 "$T" env VLLM_PACKAGE=vllm bash scripts/setup_vllm_venv.sh \
                "$DEVICE_CHECK_LOG/vllm-venv" >"$DEVICE_CHECK_LOG/vllm-install.log" 2>&1 \
                && [[ -x "$DEVICE_CHECK_LOG/vllm-venv/bin/python" ]]; then
            VLLM_PY="$DEVICE_CHECK_LOG/vllm-venv/bin/python"
        else
            tail -3 "$DEVICE_CHECK_LOG/vllm-install.log" | sed 's/^/   | /'
        fi
    fi
    if [[ -z "$VLLM_PY" ]]; then
        if (( INSTALL_SKIPPED == 0 )); then  # else the install's own skip (no time left) is recorded
            record skipped vllm "vLLM is not installed here and did not install (VLLM_VENV=DIR names one; see $DEVICE_CHECK_LOG/vllm-install.log)"
        fi
    elif budget vllm 150; then
        pytest_part vllm "$T" "$VLLM_PY" tests/test_integration_vllm.py
    fi
fi

NOTE_TEXT=""
for note in "${NOTES[@]}"; do
    NOTE_TEXT+="${NOTE_TEXT:+; }$note"
done
echo "device_check: $PASSED passed, $FAILED failed, $SKIPPED skipped${NOTE_TEXT:+ ($NOTE_TEXT)} in $((SECONDS - START)) s"
(( FAILED == 0 ))
