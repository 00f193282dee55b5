"""scripts/device_check.sh (the GPU machine's checks) parses, and on a machine without a GPU skips every
part with its reason and still ends with the one summary line."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.sh"
SUMMARY = re.compile(r"^device_check: (\d+) passed, (\d+) failed, (\d+) skipped( \((.*)\))? in \d+ s$")


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "DEVICE_CHECK_LOG": str(tmp_path), **env}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full_env, timeout=300)


def test_script_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_without_a_gpu_every_part_is_skipped_with_a_reason(tmp_path):
    result = _run(tmp_path, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")  # hides any GPU this machine has
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    found = SUMMARY.match(lines[-1])
    assert found, lines[-1]
    assert found.group(1, 2, 3) == ("0", "0", "6")
    for part in ("gpu-tests", "goldens", "flash-attn", "bench", "vllm"):
        assert f"{part}: no CUDA GPU" in found.group(5)
    assert "deepspeed: needs 2 GPUs, found 0" in found.group(5)


def test_a_python_without_torch_fails_with_the_summary_line(tmp_path):
    result = _run(tmp_path, PYTHON=str(tmp_path / "no-such-python"))
    assert result.returncode == 1
    last = result.stdout.strip().splitlines()[-1]
    assert SUMMARY.match(last) and "cannot import torch" in last
