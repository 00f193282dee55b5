"""DeepSpeed on this CPU machine (gloo): a 2-process ZeRO-2 stage-2 run through the `deepspeed` launcher and
`mgm/train/train_mem.py`, and a 2-process ZeRO-3 stage-2 run whose loading (LLM, adapter, towers) and saving
(gathered 16-bit weights) must be exact."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_support import base_flags, make_dataset, tiny_zoo

REPO = Path(__file__).resolve().parents[1]
DEEPSPEED = Path(sys.executable).parent / "deepspeed"

pytestmark = pytest.mark.skipif(not DEEPSPEED.is_file(), reason="deepspeed is not installed")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return tiny_zoo(tmp_path_factory)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds_data"), n=8)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_deepspeed(flags: list[str], config: str) -> subprocess.CompletedProcess:
    cmd = [str(DEEPSPEED), "--num_gpus", "2", "--master_port", str(_free_port()), "mgm/train/train_mem.py",
           "--deepspeed", f"scripts/{config}.json", *flags]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def stage2(zoo, data, out, adapter, *extra) -> list[str]:
    flags = base_flags(zoo, data, out)
    flags[flags.index("--per_device_train_batch_size") + 1] = "2"
    return [*flags, "--version", "v1", "--pretrain_mm_mlp_adapter", str(adapter), "--data_path",
            str(data / "stage2.json"), "--image_aspect_ratio", "pad", *extra]


@pytest.mark.slow
def test_zero2_two_processes(zoo, data, tmp_path):
    adapter = Path(zoo["stage1"]["MGM-Tiny-Vicuna-Pretrain"]["path"]) / "mm_projector.bin"
    out = tmp_path / "zero2"
    run_deepspeed(stage2(zoo, data, out, adapter, "--max_steps", "2", "--save_steps", "2",
                         "--group_by_modality_length", "True", "--learning_rate", "1e-3"), "zero2")
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert state["global_step"] == 2 and len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert (out / "checkpoint-2" / "global_step2").is_dir()  # resumable DeepSpeed state
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (out / "checkpoint-2").iterdir()}
    weights = load_file(out / "model.safetensors")
    reference = load_file(Path(zoo["checkpoints"]["MGM-Tiny-Vicuna-HD"]["path"]) / "model.safetensors")
    assert set(weights) == set(reference)


@pytest.mark.slow
def test_zero3_stage_two_loads_and_saves_exactly(zoo, data, tmp_path):
    """With learning rate 0 the saved checkpoint must equal what was loaded: the LLM folder's weights, the
    stage-1 adapter's projector and mining modules, the tower folders' weights (all partitioned by ZeRO-3)."""
    adapter_file = Path(zoo["stage1"]["MGM-Tiny-Vicuna-Pretrain"]["path"]) / "mm_projector.bin"
    out = tmp_path / "zero3"
    # One image sample and one text-only sample, one per rank: the two ranks take different paths through
    # the splice, which must not change the collectives they run.
    samples = json.loads((data / "stage2.json").read_text())
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([samples[0], next(s for s in samples if "image" not in s)]))
    flags = stage2(zoo, data, out, adapter_file, "--max_steps", "1", "--save_strategy", "no", "--learning_rate", "0")
    flags[flags.index("--data_path") + 1] = str(mixed)
    flags[flags.index("--per_device_train_batch_size") + 1] = "1"
    run_deepspeed(flags, "zero3")
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and math.isfinite(state["log_history"][0]["loss"])
    weights = load_file(out / "model.safetensors")
    adapter = torch.load(adapter_file, weights_only=True)
    llm = load_file(Path(zoo["llms"]["vicuna"]) / "model.safetensors")
    for source in (adapter, llm):
        for key, value in source.items():
            assert torch.equal(weights[key], value), key
    assert json.loads((out / "config.json").read_text())["model_type"] == "mgm"
