#!/bin/bash
# Tiny MGM stage 1 (feature alignment) on CPU: only the projector and the patch-info-mining modules
# learn; writes $OUT/stage1/mm_projector.bin. Environment overrides: see tiny_common.sh.
set -e
source "$(dirname "${BASH_SOURCE[0]}")/tiny_common.sh"
require_data stage1.json

tiny_run \
    --tune_mm_mlp_adapter True \
    --version "$VERSION_1" \
    --data_path "$DATA/stage1.json" \
    --image_folder "$DATA" \
    --learning_rate "${LR:-1e-3}" \
    --output_dir "$OUT/stage1"
