"""The tiny CPU recipes really run: scripts/tiny/train/stage_1.sh, stage_2.sh and stage_2_lora.sh (+ merge) on
the tiny zoo and a small data set, with the environment overrides the main pipeline uses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train_support import make_dataset, tiny_zoo

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_scripts_run_both_stages_and_lora(tmp_path_factory, tmp_path):
    zoo = tiny_zoo(tmp_path_factory)
    data = make_dataset(tmp_path / "data", n=8)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "ZOO": zoo["root"], "DATA": str(data), "OUT": str(out),
           "MAX_STEPS": "2", "WORKERS": "0", "BATCH": "4"}
    for script in ("stage_1.sh", "stage_2.sh", "stage_2_lora.sh"):
        result = subprocess.run(["bash", str(REPO / "scripts" / "tiny" / "train" / script)], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (script, result.stderr[-3000:])
    assert (out / "stage1" / "mm_projector.bin").is_file()
    assert json.loads((out / "stage2" / "trainer_state.json").read_text())["global_step"] == 2
    assert (out / "stage2" / "model.safetensors").is_file()
    assert (out / "stage2_lora" / "non_lora_trainables.bin").is_file()
    assert (out / "stage2_lora_merged" / "model.safetensors").is_file()
