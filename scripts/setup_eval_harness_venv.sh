#!/usr/bin/env bash
# Build a virtual environment with an external evaluation toolkit beside mgm (mgm.integrations).
#
# lmms-eval pins wandb (hence protobuf<7) and VLMEvalKit pulls opencv-python and an older antlr4, so
# neither goes into mgm's own venv. Each gets an OVERLAY venv instead: a small venv whose interpreter
# also sees the base venv's site-packages (torch, transformers, ... are not installed twice). The
# toolkit and whatever it pins differently are installed into the overlay, which comes first on
# sys.path; the base venv is never modified (pip refuses to uninstall outside its own environment).
#
# Usage: scripts/setup_eval_harness_venv.sh TOOLKIT [VENV_DIR] [BASE_VENV]
#   TOOLKIT    lmms-eval | vlmevalkit
#   VENV_DIR   default /work/venvs/<TOOLKIT>
#   BASE_VENV  the venv with mgm and its dependencies (default: .venv of this repository)
#   LMMS_EVAL_PACKAGE / VLMEVALKIT_PACKAGE override the pinned toolkit versions below.
set -euo pipefail
TOOLKIT=${1:?usage: $0 lmms-eval|vlmevalkit [VENV_DIR] [BASE_VENV]}
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${2:-/work/venvs/$TOOLKIT}
BASE=${3:-$REPO/.venv}
KEEP_FROM_BASE=""
EXTRA_PINS=""
case "$TOOLKIT" in
  lmms-eval)
    PACKAGE=${LMMS_EVAL_PACKAGE:-lmms-eval==0.7.3}; CHECK='import lmms_eval.evaluator, lmms_eval.models'
    # lmms-eval pins wandb==0.25.0, which pins protobuf<7; transformers 5's bundled sentencepiece proto
    # needs the newer runtime mgm's venv has, or every sentencepiece tokenizer fails to load. The
    # overlay's protobuf is removed again (only lmms-eval's optional --wandb_args logging needs it).
    KEEP_FROM_BASE="protobuf"
    # its evaluator patches filelock._api, which filelock 4 no longer has
    EXTRA_PINS="filelock>=3.16,<4" ;;
  # VLMEvalKit is not on PyPI under its own name; ModelScope publishes the whole kit as ms-vlmeval
  # (the `vlmeval` package with run.py, inference.py, vlm/, dataset/).
  vlmevalkit) PACKAGE=${VLMEVALKIT_PACKAGE:-ms-vlmeval==0.0.20}; CHECK='import vlmeval.inference, vlmeval.dataset' ;;
  *) echo "unknown toolkit '$TOOLKIT' (valid: lmms-eval, vlmevalkit)" >&2; exit 2 ;;
esac
[ -x "$BASE/bin/python" ] || { echo "base venv $BASE has no bin/python; create it first (pip install -e '.[all,test]')" >&2; exit 2; }
start=$(date +%s)

# The overlay must use the base venv's own interpreter build, not whatever python3 is first on PATH.
PYTHON=$("$BASE/bin/python" -c 'import sys; print(sys._base_executable)')
BASE_SITE=$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# addsitedir (not a bare path line) so the base's own .pth files (editable installs) are honoured too;
# the name sorts after pip's and setuptools' own .pth files, so the overlay's packages win.
echo "import site; site.addsitedir('$BASE_SITE')" > "$SITE/zz_mgm_base_venv.pth"

PIP="$VENV/bin/python -m pip"
# mgm from this checkout with the toolkit's extra; mgm's own dependencies are already satisfied by
# the base venv. Its dist-info here carries the lmms_eval.models entry point (the `mgm` model).
echo "[setup_eval_harness_venv] installing mgm[$TOOLKIT] $PACKAGE $EXTRA_PINS into $VENV (over $BASE)"
if ! $PIP install -q -e "$REPO[$TOOLKIT]" "$PACKAGE" $EXTRA_PINS > "$VENV/pip-install.log" 2>&1; then
  tail -40 "$VENV/pip-install.log" >&2; exit 1
fi
for pkg in $KEEP_FROM_BASE; do
  if [ -n "$(find "$SITE" -maxdepth 1 -iname "${pkg}-*.dist-info" -print -quit)" ]; then
    $PIP uninstall -q -y "$pkg"
  fi
done
"$VENV/bin/python" -c "$CHECK; import mgm, torch, transformers, google.protobuf as pb; print('$TOOLKIT ok: torch', torch.__version__, 'transformers', transformers.__version__, 'protobuf', pb.__version__)"
echo "[setup_eval_harness_venv] done in $(( $(date +%s) - start )) s: $VENV"
