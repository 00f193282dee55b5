"""Both training stages on the tiny zoo, in process: trainable sets, stage-1 adapter file and its loading into
stage 2, resume, bad samples, optimizer groups, stage 1 -> stage 2 -> CLI answer, LoRA -> merge -> load."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_support import base_flags, make_dataset, tiny_zoo

from mgm.errors import UserError
from mgm.train.args import parse_args
from mgm.train.checkpoint import ADAPTER_KEYWORDS, resumable_reason
from mgm.train.train import main as train_main
from mgm.train.train import train

REPO = Path(__file__).resolve().parents[1]
MINING = ("vlm_uni_query_projector", "vlm_uni_aux_projector", "vlm_uni_val_projector")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return tiny_zoo(tmp_path_factory)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("train_data"), n=16)


def stage1_flags(zoo, data, out, *extra):
    return [*base_flags(zoo, data, out), "--version", "plain", "--tune_mm_mlp_adapter", "True",
            "--data_path", str(data / "stage1.json"), "--learning_rate", "1e-3", *extra]


def stage2_flags(zoo, data, out, adapter, *extra):
    return [*base_flags(zoo, data, out), "--version", "v1", "--pretrain_mm_mlp_adapter", str(adapter),
            "--data_path", str(data / "stage2.json"), "--image_aspect_ratio", "pad",
            "--group_by_modality_length", "True", *extra]


@pytest.fixture(scope="module")
def stage1(zoo, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1") / "run"
    summary = train(argv=stage1_flags(zoo, data, out, "--max_steps", "4", "--save_steps", "2"))
    return out, summary


def _setup(argv):
    from mgm.train.model_init import build_training_setup

    model_args, data_args, training_args = parse_args(argv)
    return build_training_setup(model_args, data_args, training_args)


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# -- which parameters train -------------------------------------------------------------------------


def test_trainable_sets_per_stage(zoo, data, stage1, tmp_path):
    s1 = _setup(stage1_flags(zoo, data, tmp_path / "a"))
    names = {n for n, _ in s1.model.named_parameters()}
    mm = {n for n in names if "mm_projector" in n or "vlm_uni" in n}
    assert _trainable(s1.model) == mm and len(mm) == 4 + 12
    assert s1.stage == "pretrain" and s1.template_name == "plain"

    s2 = _setup(stage2_flags(zoo, data, tmp_path / "b", stage1[0] / "mm_projector.bin"))
    towers = {n for n in names if "vision_tower" in n}
    assert _trainable(s2.model) == names - towers
    assert s2.stage == "finetune"

    lora = _setup(stage2_flags(zoo, data, tmp_path / "c", stage1[0] / "mm_projector.bin", "--lora_enable", "True",
                               "--lora_r", "4"))
    trainable = _trainable(lora.model)
    lora_names = {n for n in trainable if "lora_" in n}
    assert lora_names and all(("self_attn" in n or "mlp" in n) and "vision" not in n for n in lora_names)
    assert {n for n in trainable if "lora_" not in n} == {"base_model.model." + n for n in mm}

    frozen = _setup(stage2_flags(zoo, data, tmp_path / "d", stage1[0] / "mm_projector.bin",
                                 "--freeze_mm_mlp_adapter", "True", "--optimize_vision_tower", "True"))
    trainable = _trainable(frozen.model)
    assert not any("mm_projector" in n for n in trainable)
    clip_layers = {n.split(".encoder.layers.")[1].split(".")[0] for n in trainable if ".encoder.layers." in n}
    assert clip_layers == {"1", "2"}  # layers [n // 2, n) of the 3 tiny CLIP layers


def test_stage_one_needs_a_vision_tower(zoo, data, tmp_path):
    argv = [a for a in stage1_flags(zoo, data, tmp_path) if a]
    i = argv.index("--vision_tower")
    del argv[i:i + 2]
    with pytest.raises(UserError, match="needs --vision_tower"):
        _setup(argv)


# -- the stage-1 adapter ----------------------------------------------------------------------------


def test_mm_projector_bin_has_the_original_full_keys(zoo, stage1):
    out, summary = stage1
    assert summary["stage"] == "pretrain" and summary["global_step"] == 4
    ours = torch.load(out / "mm_projector.bin", weights_only=True)
    reference = torch.load(Path(zoo["stage1"]["MGM-Tiny-Vicuna-Pretrain"]["path"]) / "mm_projector.bin",
                           weights_only=True)
    assert set(ours) == set(reference)  # same layout as the zoo's independent rendering of the original
    assert all(any(w in k for w in ADAPTER_KEYWORDS) for k in ours)
    assert {"model.mm_projector.0.weight", "model.vlm_uni_aux_projector.1.weight",
            "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"} <= set(ours)
    assert all(v.device.type == "cpu" for v in ours.values())
    # frozen towers are saved as they were loaded from their folders
    clip = load_file(Path(zoo["towers"]["clip"]) / "model.safetensors")
    key = "vision_model.embeddings.patch_embedding.weight"
    assert torch.equal(ours["model.vision_tower.vision_tower." + key], clip[key])
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mgm" and config["architectures"] == ["MGMLlamaForCausalLM"]
    assert config["tune_mm_mlp_adapter"] is True and "drop_path" not in config
    assert not (out / "model.safetensors").exists() and not (out / "optimizer.pt").exists()


def test_stage_one_output_is_not_taken_for_a_checkpoint(stage1):
    out, _ = stage1
    assert "stage-1 adapter folder" in resumable_reason(out)
    assert resumable_reason(out / "checkpoint-4") is None
    assert (out / "checkpoint-4" / "mm_projector.bin").is_file() and (out / "checkpoint-4" / "optimizer.pt").is_file()


def test_adapter_loads_into_stage_two(zoo, data, stage1, tmp_path):
    adapter = torch.load(stage1[0] / "mm_projector.bin", weights_only=True)
    setup = _setup(stage2_flags(zoo, data, tmp_path, stage1[0] / "mm_projector.bin"))
    state = setup.model.state_dict()
    for key in [k for k in adapter if "mm_projector" in k or "vlm_uni" in k]:
        assert torch.equal(state[key], adapter[key]), key
    assert setup.adapter_report["mm_projector"] == 4 and setup.adapter_report["vlm_uni_aux_projector"] == 4
    llm = load_file(Path(zoo["llms"]["vicuna"]) / "model.safetensors")
    assert torch.equal(state["model.layers.0.self_attn.q_proj.weight"], llm["model.layers.0.self_attn.q_proj.weight"])


def test_bad_adapter_files_are_user_errors(zoo, data, stage1, tmp_path):
    adapter = torch.load(stage1[0] / "mm_projector.bin", weights_only=True)
    no_projector = tmp_path / "empty.bin"
    torch.save({k: v for k, v in adapter.items() if "mm_projector" not in k}, no_projector)
    with pytest.raises(UserError, match="no model.mm_projector"):
        _setup(stage2_flags(zoo, data, tmp_path / "a", no_projector))
    wrong = tmp_path / "wrong.bin"
    torch.save({**adapter, "model.mm_projector.0.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(UserError, match="shape"):
        _setup(stage2_flags(zoo, data, tmp_path / "b", wrong))
    with pytest.raises(UserError, match="does not exist"):
        _setup(stage2_flags(zoo, data, tmp_path / "c", tmp_path / "missing.bin"))


# -- resume -----------------------------------------------------------------------------------------


def test_resume_restores_optimizer_scheduler_and_data_position(zoo, data, stage1, tmp_path):
    first, summary = stage1
    out = tmp_path / "run"
    shutil.copytree(first / "checkpoint-2", out / "checkpoint-2")  # as if the run had stopped after step 2
    resumed = train(argv=stage1_flags(zoo, data, out, "--max_steps", "4", "--save_steps", "2"))
    assert resumed["resumed_from"] == str(out / "checkpoint-2")
    # steps 1-2 come from the checkpoint's log, steps 3-4 are recomputed: same batches, order and weights
    assert resumed["losses"] == summary["losses"]
    a = torch.load(first / "mm_projector.bin", weights_only=True)
    b = torch.load(out / "mm_projector.bin", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_original_style_stage_one_checkpoint_is_not_resumed(zoo, data, tmp_path, caplog):
    out = tmp_path / "run"
    fake = out / "checkpoint-2"
    fake.mkdir(parents=True)
    shutil.copy(Path(zoo["stage1"]["MGM-Tiny-Vicuna-Pretrain"]["path"]) / "mm_projector.bin", fake)
    shutil.copy(Path(zoo["stage1"]["MGM-Tiny-Vicuna-Pretrain"]["path"]) / "config.json", fake)
    summary = train(argv=stage1_flags(zoo, data, out, "--max_steps", "1", "--save_strategy", "no"))
    assert summary["resumed_from"] is None and summary["global_step"] == 1
    assert "cannot be resumed" in caplog.text
    with pytest.raises(UserError, match="stage-1 adapter folder"):
        train(argv=stage1_flags(zoo, data, tmp_path / "other", "--max_steps", "1",
                                "--resume_from_checkpoint", str(fake)))


# -- bad samples ------------------------------------------------------------------------------------


def _bad_data(data: Path, tmp_path: Path, bad: dict) -> Path:
    samples = json.loads((data / "stage2.json").read_text())[:6]
    file = tmp_path / "with_bad.json"
    file.write_text(json.dumps(samples[:3] + [bad] + samples[3:]))
    return file


def _run_main(argv, capsys) -> tuple[int, str]:
    code = train_main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("bad, needle", [
    ({"id": "ghost", "image": "images/ghost.png", "conversations": [
        {"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok"}]}, "images/ghost.png does not exist"),
    ({"id": "mute", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}]},
     "no supervised token"),
])
def test_bad_sample_stops_training_with_its_id_and_reason(zoo, data, stage1, tmp_path, capsys, bad, needle):
    file = _bad_data(data, tmp_path, bad)
    argv = stage2_flags(zoo, data, tmp_path / "out", stage1[0] / "mm_projector.bin", "--max_steps", "3",
                        "--save_strategy", "no")
    argv[argv.index("--data_path") + 1] = str(file)
    argv[argv.index("--group_by_modality_length") + 1] = "False"
    code, err = _run_main(argv, capsys)
    assert code == 2
    line = [x for x in err.splitlines() if x.startswith("error:")][-1]
    assert f"id='{bad['id']}'" in line and "index 3" in line and needle in line and "--skip_bad_samples" in line


def test_skip_bad_samples_counts_and_logs_them(zoo, data, stage1, tmp_path):
    bad = {"id": "ghost", "image": "images/ghost.png", "conversations": [
        {"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok"}]}
    file = _bad_data(data, tmp_path, bad)
    out = tmp_path / "out"
    argv = stage2_flags(zoo, data, out, stage1[0] / "mm_projector.bin", "--num_train_epochs", "1",
                        "--save_strategy", "no", "--skip_bad_samples", "True")
    argv[argv.index("--data_path") + 1] = str(file)
    summary = train(argv=argv)
    assert summary["skipped_samples"] == 1 and summary["global_step"] == 2
    records = [json.loads(line) for line in (out / "skipped_samples.jsonl").read_text().splitlines()]
    assert [(r["id"], r["index"], r["kind"]) for r in records] == [("ghost", 3, "image")]


# -- optimizer groups -------------------------------------------------------------------------------


def test_optimizer_groups_for_projector_lr_and_lr_multi():
    from mgm.train.trainer import parameter_groups

    p = {n: torch.nn.Parameter(torch.zeros(1)) for n in (
        "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.bias", "model.mm_projector.0.weight",
        "model.mm_projector.0.bias", "model.vlm_uni_aux_projector.1.weight", "model.norm.weight")}
    named = list(p.items())
    decay = {"model.layers.0.mlp.up_proj.weight", "model.mm_projector.0.weight", "model.vlm_uni_aux_projector.1.weight"}
    groups = {g["name"]: g for g in parameter_groups(named, decay, 1e-4, 0.1, 2e-5, {})}
    assert groups["mm_projector_decay"]["lr"] == 2e-5 and groups["mm_projector_no_decay"]["weight_decay"] == 0.0
    assert "lr" not in groups["decay"] and len(groups["decay"]["params"]) == 2
    groups = {g["name"]: g for g in parameter_groups(named, decay, 1e-4, 0.0, None,
                                                     {"model.mm_projector": 2.0, "model.vlm_uni": 3.0})}
    assert groups["model.mm_projector_decay"]["lr"] == pytest.approx(2e-4)
    assert groups["model.vlm_uni_decay"]["lr"] == pytest.approx(3e-4)
    assert sum(len(g["params"]) for g in groups.values()) == len(named)
    assert len(groups["no_decay"]["params"]) == 2  # bias + norm of the LLM


# -- end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage2(zoo, data, stage1, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage2") / "run"
    summary = train(argv=stage2_flags(zoo, data, out, stage1[0] / "mm_projector.bin", "--max_steps", "12",
                                      "--learning_rate", "1e-3", "--save_strategy", "no",
                                      "--gradient_checkpointing", "True"))
    return out, summary


def test_stage_two_loss_falls_and_checkpoint_has_the_original_layout(zoo, stage2):
    out, summary = stage2
    losses = summary["losses"]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    ours = load_file(out / "model.safetensors")
    reference = load_file(Path(zoo["checkpoints"]["MGM-Tiny-Vicuna-HD"]["path"]) / "model.safetensors")
    assert set(ours) == set(reference)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mgm" and config["image_aspect_ratio"] == "pad"
    assert config["use_cache"] is True and config["tune_mm_mlp_adapter"] is False
    assert (out / "tokenizer_config.json").is_file()


def test_stage_two_output_answers_through_the_cli(stage2, data):
    out, _ = stage2
    result = subprocess.run(
        [sys.executable, "-m", "mgm.serve.cli", "--model-path", str(out), "--image-file",
         str(data / "images" / "0001.png"), "--device", "cpu", "--temperature", "0", "--max-new-tokens", "4"],
        input="What color is the shape?\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ASSISTANT:" in result.stdout


def test_lora_then_merge_then_load(zoo, data, stage1, tmp_path):
    from mgm.model.builder import load_pretrained_model

    lora_out, merged = tmp_path / "lora", tmp_path / "merged"
    train(argv=stage2_flags(zoo, data, lora_out, stage1[0] / "mm_projector.bin", "--max_steps", "3",
                            "--learning_rate", "1e-3", "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8",
                            "--save_strategy", "no"))
    for name in ("adapter_config.json", "config.json", "non_lora_trainables.bin"):
        assert (lora_out / name).is_file()
    non_lora = torch.load(lora_out / "non_lora_trainables.bin", weights_only=True)
    assert set(non_lora) == {"base_model.model." + k for k in non_lora_keys(zoo)}

    script = REPO / "scripts" / "merge_lora_weights.py"
    subprocess.run([sys.executable, str(script), "--model-path", str(lora_out), "--model-base",
                    zoo["llms"]["vicuna"], "--save-model-path", str(merged)], check=True, capture_output=True)
    _, from_lora, _, _ = load_pretrained_model(str(lora_out), zoo["llms"]["vicuna"], "lora", device="cpu")
    _, from_merged, _, _ = load_pretrained_model(str(merged), None, "merged", device="cpu")
    ids = torch.tensor([[1, 30, 40, 50, 60]])
    with torch.no_grad():
        a, b = from_lora(input_ids=ids).logits, from_merged(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    weights = load_file(merged / "model.safetensors")
    base = load_file(Path(zoo["llms"]["vicuna"]) / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights[key], base[key])  # the LoRA update is merged in
    assert torch.equal(weights["model.mm_projector.0.weight"], non_lora["base_model.model.model.mm_projector.0.weight"])


def non_lora_keys(zoo) -> set[str]:
    state = load_file(Path(zoo["checkpoints"]["MGM-Tiny-Vicuna-HD"]["path"]) / "model.safetensors")
    return {k for k in state if "mm_projector" in k or "vlm_uni" in k}


def test_qlora_four_bit_step(zoo, data, stage1, tmp_path):
    pytest.importorskip("bitsandbytes")
    setup = _setup(stage2_flags(zoo, data, tmp_path, stage1[0] / "mm_projector.bin", "--bits", "4",
                                "--lora_enable", "True", "--lora_r", "4"))
    kinds = {type(m).__name__ for n, m in setup.model.named_modules() if n.endswith("q_proj.base_layer")}
    assert kinds == {"Linear4bit"}
    for name, module in setup.model.named_modules():  # towers, projector and mining stay unquantised
        if any(w in name for w in ("vision_tower", "mm_projector", "vlm_uni")):
            assert "4bit" not in type(module).__name__, name
    summary = train(argv=stage2_flags(zoo, data, tmp_path / "run", stage1[0] / "mm_projector.bin", "--bits", "4",
                                      "--lora_enable", "True", "--lora_r", "4", "--max_steps", "2",
                                      "--learning_rate", "1e-3", "--save_strategy", "no"))
    assert summary["global_step"] == 2 and all(loss == loss for loss in summary["losses"])
    assert (tmp_path / "run" / "adapter_config.json").is_file()
