"""Training flags (docs/original.md#training, aliases, YAML presets) and every shipped training script:
`bash -n`, then a run with a stub launcher whose recorded command line must parse."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mgm.errors import UserError
from mgm.train.args import DataArguments, ModelArguments, TrainingArguments, check_flags, parse_args

REPO = Path(__file__).resolve().parents[1]
FAMILY_SCRIPTS = sorted(REPO.glob("scripts/*/train/*.sh"))
RECIPES = [p for p in FAMILY_SCRIPTS if p.parent.parent.name != "tiny"]
TINY = [p for p in FAMILY_SCRIPTS if p.parent.parent.name == "tiny" and p.name != "tiny_common.sh"]


def test_original_defaults():
    m, d = ModelArguments(), DataArguments()
    assert (m.model_name_or_path, m.version, m.mm_vision_select_layer, m.mm_projector_type) == (
        "facebook/opt-125m", "v0", -1, "linear")
    assert (m.mm_use_im_patch_token, m.mm_use_im_start_end, m.drop_path, m.tune_mm_mlp_adapter) == (
        True, False, True, False)
    assert (d.image_aspect_ratio, d.image_size_aux, d.image_grid, d.image_global, d.lazy_preprocess) == (
        "square", 320, 1, False, False)
    defaults = {f: TrainingArguments.__dataclass_fields__[f].default for f in (
        "optim", "remove_unused_columns", "model_max_length", "double_quant", "quant_type", "bits", "lora_enable",
        "lora_r", "lora_alpha", "lora_dropout", "lora_bias", "mm_projector_lr", "group_by_modality_length",
        "lr_multi", "freeze_mm_mlp_adapter", "mpt_attn_impl", "lora_weight_path")}
    assert defaults == {"optim": "adamw_torch", "remove_unused_columns": False, "model_max_length": 512,
                        "double_quant": True, "quant_type": "nf4", "bits": 16, "lora_enable": False, "lora_r": 64,
                        "lora_alpha": 16, "lora_dropout": 0.05, "lora_bias": "none", "mm_projector_lr": None,
                        "group_by_modality_length": False, "lr_multi": None, "freeze_mm_mlp_adapter": False,
                        "mpt_attn_impl": "triton", "lora_weight_path": ""}


def test_old_flag_names_and_machine_adaptation(tmp_path):
    with pytest.warns(UserWarning):
        model, data, train = parse_args([
            "--output_dir", str(tmp_path), "--evaluation_strategy", "no", "--warmup_ratio", "0.03", "--tf32", "True",
            "--bf16", "True", "--local_rank", "0", "--version", "llama_3", "--image_grid", "2",
            "--image_global", "True", "--lr_multi", "model.mm_projector:2,model.vlm_uni:2", "--report_to", "wandb"])
    assert train.eval_strategy == "no" and train.warmup_steps == 0.03
    assert model.version == "llama_3" and data.image_grid == 2 and data.image_global is True
    assert train.lr_multi == "model.mm_projector:2,model.vlm_uni:2"
    import torch

    if not torch.cuda.is_available():
        assert train.tf32 is None and train.use_cpu is True


def test_yaml_preset_with_command_line_override(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("version: v1\nlearning_rate: 0.001\ntune_mm_mlp_adapter: true\nreport_to: [none]\n"
                      "image_size_aux: 768\n")
    model, data, train = parse_args(["--config", str(preset), "--output_dir", str(tmp_path),
                                     "--learning_rate", "2e-5"])
    assert model.version == "v1" and model.tune_mm_mlp_adapter is True and data.image_size_aux == 768
    assert train.learning_rate == 2e-5


@pytest.mark.parametrize("argv, message", [
    (["--no_such_flag", "1"], "unknown training flag"),
    (["--bits", "3"], "--bits 3"),
    (["--lora_bias", "some"], "--lora_bias"),
    (["--lr_multi", "mm_projector"], "--lr_multi"),
    (["--config", "/nonexistent.yaml"], "does not exist"),
])
def test_bad_flags_are_user_errors(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        parse_args(["--output_dir", str(tmp_path), *argv])


def test_deepspeed_configs_have_the_original_content():
    for name in ("zero2", "zero2_offload", "zero3"):
        cfg = json.loads((REPO / "scripts" / f"{name}.json").read_text())
        assert cfg == json.loads((REPO / "configs" / "deepspeed" / f"{name}.json").read_text())
        assert cfg["bf16"] == {"enabled": "auto"} and cfg["fp16"]["initial_scale_power"] == 16
        assert cfg["train_batch_size"] == cfg["gradient_accumulation_steps"] == "auto"
        zero = cfg["zero_optimization"]
        assert zero["stage"] == (3 if name == "zero3" else 2) and zero["sub_group_size"] == 1e9
    offload = json.loads((REPO / "scripts" / "zero2_offload.json").read_text())["zero_optimization"]
    assert offload["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    zero3 = json.loads((REPO / "scripts" / "zero3.json").read_text())["zero_optimization"]
    assert zero3["stage3_gather_16bit_weights_on_model_save"] is True


def test_every_recipe_of_the_table_is_shipped():
    names = {f"{p.parent.parent.name}/{p.stem}" for p in RECIPES}
    assert names == {
        "gemma/stage_1_2_full_gemma_v2b_336_hr_768", "gemma/stage_2_full_gemma_v2b_672_hr_1536",
        "llama/stage_1_2_full_v7b_336_hr_768", "llama/stage_1_2_full_v7b_336_hr_768_nodp",
        "llama/stage_2_full_v7b_672_hr_1536", "llama/stage_1_2_full_v13b_336_hr_768",
        "llama/stage_2_full_v13b_672_hr_1536", "llama3/stage_1_2_full_v8b_336_hr_768",
        "llama3/stage_2_full_v8b_672_hr_1536", "mixtral/stage_1_2_full_mixtral_8x7b_336_hr_768",
        "mixtral/stage_2_full_mixtral_8x7b_672_hr_1536", "yi/stage_1_2_full_yi34b_336_hr_768",
        "yi/stage_2_full_yi34b_672_hr_1536"}


@pytest.mark.parametrize("script", [REPO / "scripts" / "train_common.sh", *FAMILY_SCRIPTS], ids=lambda p: p.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def _run_with_stub(script: Path, tmp_path: Path, env_extra: dict) -> list[list[str]]:
    """Run `script` with a `deepspeed` stub that records each command line; returns them."""
    record = tmp_path / "calls.jsonl"
    stub = tmp_path / "bin" / "deepspeed"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text('#!/usr/bin/env python3\nimport json, os, sys\n'
                    'open(os.environ["STUB_RECORD"], "a").write(json.dumps(sys.argv[1:]) + "\\n")\n')
    stub.chmod(0o755)
    env = {**os.environ, "STUB_RECORD": str(record), "LAUNCHER": str(stub), **env_extra}
    subprocess.run(["bash", str(script)], check=True, env=env, cwd=tmp_path, capture_output=True, text=True)
    return [json.loads(line) for line in record.read_text().splitlines()]


def _global_batch(flags: list[str], hosts: int) -> int:
    def last(name: str, default: int) -> int:  # the last occurrence wins, as in argparse
        return int(flags[len(flags) - flags[::-1].index(name)]) if name in flags else default

    return last("--per_device_train_batch_size", 8) * last("--gradient_accumulation_steps", 1) * hosts * 8


@pytest.mark.filterwarnings("ignore:--tf32 True ignored", "ignore:--report_to wandb ignored", "ignore::FutureWarning")
@pytest.mark.parametrize("script", RECIPES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_recipe_flags_parse(script, tmp_path):
    calls = _run_with_stub(script, tmp_path, {})
    assert len(calls) == (2 if "stage_1_2" in script.name else 1)
    for call in calls:
        hosts = 1
        if call[0] == "--hostfile":
            hostfile = REPO / call[1]
            assert hostfile.is_file()
            lines = hostfile.read_text().splitlines()
            hosts = sum(1 for line in lines if "slots=" in line and not line.startswith("#"))
            call = call[2:]
        assert call[0] == "mgm/train/train_mem.py" and (REPO / call[0]).is_file()
        flags = call[1:]
        namespace = check_flags(flags)
        assert (REPO / namespace.deepspeed).is_file()
        stage1 = namespace.tune_mm_mlp_adapter
        assert _global_batch(flags, hosts) == (256 if stage1 else 128)
        assert namespace.learning_rate == (1e-3 if stage1 else namespace.learning_rate)
        assert namespace.mm_projector_type == "mlp2x_gelu" and namespace.mm_vision_select_layer == -2
        if not stage1:
            assert namespace.pretrain_mm_mlp_adapter.endswith("-Pretrain/mm_projector.bin") or \
                namespace.pretrain_mm_mlp_adapter.endswith("-Pretrain-nodp/mm_projector.bin")
            assert namespace.image_aspect_ratio == "pad" and namespace.group_by_modality_length is True
        # the values must also pass the dataclasses' own checks (without starting DeepSpeed)
        ds_free = [f for i, f in enumerate(flags) if f != "--deepspeed" and (i == 0 or flags[i - 1] != "--deepspeed")]
        parse_args(ds_free + ["--output_dir", str(tmp_path / "x")])


@pytest.mark.parametrize("script", TINY, ids=lambda p: p.name)
def test_tiny_scripts_flags_parse(script, tmp_path):
    zoo, data = tmp_path / "zoo", tmp_path / "data"
    zoo.mkdir()
    (zoo / "manifest.json").write_text("{}")
    data.mkdir()
    for name in ("stage1.json", "stage2.json"):
        (data / name).write_text("[]")
    calls = _run_with_stub(script, tmp_path, {"ZOO": "zoo", "DATA": "data", "OUT": "out", "MAX_STEPS": "3",
                                              "MERGE": "0", "DS_CONFIG": "scripts/zero2.json"})
    assert len(calls) == 1
    call = calls[0]
    assert call[0] == "mgm/train/train_mem.py"
    namespace = check_flags(call[1:])
    assert namespace.model_name_or_path == str(zoo / "LLM" / "vicuna")  # relative to the caller's folder
    assert namespace.data_path.startswith(str(data)) and namespace.output_dir.startswith(str(tmp_path / "out"))
    assert namespace.max_steps == 3 and namespace.bf16 is False and namespace.report_to in ("none", ["none"])
    assert namespace.vision_tower_aux == str(zoo / "OpenAI" / "openclip-convnext-tiny")


def test_tiny_ablation_drops_the_hr_tower(tmp_path):
    zoo, data = tmp_path / "zoo", tmp_path / "data"
    zoo.mkdir()
    (zoo / "manifest.json").write_text("{}")
    data.mkdir()
    (data / "stage1.json").write_text("[]")
    calls = _run_with_stub(REPO / "scripts/tiny/train/stage_1.sh", tmp_path,
                           {"ZOO": str(zoo), "DATA": str(data), "AUX": "0", "FAMILY": "gemma"})
    namespace = check_flags(calls[0][1:])
    assert namespace.vision_tower_aux is None and namespace.version == "gemma"
    assert namespace.tune_mm_mlp_adapter is True


def test_tiny_script_without_data_says_what_to_do(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "manifest.json").write_text("{}")
    result = subprocess.run(["bash", str(REPO / "scripts/tiny/train/stage_1.sh")], cwd=tmp_path, text=True,
                            capture_output=True, env={**os.environ, "ZOO": str(zoo), "DATA": str(tmp_path / "none")})
    assert result.returncode == 2 and "stage1.json not found" in result.stderr


@pytest.mark.parametrize("preset", sorted((REPO / "configs" / "presets").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_presets_parse(preset):
    namespace = check_flags(["--config", str(preset)])
    assert namespace.vision_tower and namespace.data_path and namespace.output_dir
    assert namespace.report_to in ("none", ["none"])
