"""MGM on any LLM and any tower: derived family rows for LLMs the table does not name, SigLIP / SigLIP 2 LR
towers and timm ConvNeXt HR towers chosen from their folders' config files (outputs compared with the
transformers / timm models themselves), `--version chat_template` masking with the LLM's own Jinja template,
and the two-stage recipe (stage 1 `plain`, stage 2 `chat_template`) on tiny random models, answered through
the CLI."""
from __future__ import annotations

import io
import json
import sys

import pytest
import torch
from test_train_support import make_dataset

from mgm.constants import IGNORE_INDEX
from mgm.errors import UserError


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    from mgm.zoo.any_llm import make_tower
    from mgm.zoo.towers import build_clip_tower, build_convnext_tower

    root = tmp_path_factory.mktemp("any_towers")
    out = {kind: make_tower(kind, root / kind) for kind in ("siglip", "siglip_vision", "timm_convnext",
                                                             "timm_convnext_v2")}
    out["openclip"] = build_convnext_tower(root / "openclip", 0)
    out["clip"] = build_clip_tower(root / "clip", 0)
    return out


# -- families --------------------------------------------------------------------------------------


def test_any_causal_lm_gets_a_derived_row_and_auto_classes():
    import mgm  # noqa: F401  (registration on first lookup)
    from transformers import AutoConfig, Qwen3ForCausalLM, Qwen3MoeForCausalLM

    from mgm.model.families import classes_for_model_type, family_for_llm, find_family_for_llm

    fam = family_for_llm("qwen3")
    assert fam.model_type == "mgm_qwen3" and find_family_for_llm("qwen3") is None
    config = AutoConfig.for_model("mgm_qwen3", hidden_size=32, num_attention_heads=2, num_key_value_heads=1)
    assert type(config).__name__ == "MGMQwen3Config" and config.model_type == "mgm_qwen3"
    _, _, causal = classes_for_model_type("mgm_qwen3_moe")
    assert issubclass(causal, Qwen3MoeForCausalLM) and causal.__name__ == "MGMQwen3MoeForCausalLM"
    assert issubclass(classes_for_model_type("mgm_qwen3")[2], Qwen3ForCausalLM)
    # the released rows keep their names and classes
    assert classes_for_model_type("mgm")[2].__name__ == "MGMLlamaForCausalLM"
    assert family_for_llm("llama").model_type == "mgm"
    with pytest.raises(UserError, match="t5.*AutoModelForCausalLM"):
        family_for_llm("t5")
    with pytest.raises(UserError, match="mgm_<X>"):
        classes_for_model_type("mgm_not_a_model")


def test_moe_leaf_types_are_read_off_the_model():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from mgm.model.families import moe_leaf_types

    model = Qwen3MoeForCausalLM(Qwen3MoeConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, num_key_value_heads=1, num_experts=2,
                                                num_experts_per_tok=1, moe_intermediate_size=8))
    assert [t.__name__ for t in moe_leaf_types(model)] == ["Qwen3MoeSparseMoeBlock"]


# -- towers ----------------------------------------------------------------------------------------


def _settings(**kw):
    from mgm.model.settings import MGMSettings

    return MGMSettings.from_config(type("C", (), {"mm_vision_tower": "x", **kw})())


@pytest.mark.parametrize("kind", ["siglip", "siglip_vision"])
def test_siglip_tower_matches_transformers(towers, kind):
    from transformers import SiglipModel, SiglipVisionModel

    from mgm.model.vision_encoder import load_clip_folder as _load_clip_folder
    from mgm.model.vision.kinds import build_lr_tower, lr_kind

    folder = towers[kind]
    assert lr_kind(folder) == "siglip"
    tower = build_lr_tower(folder, str(folder), _settings())
    _load_clip_folder(tower, folder)
    ref = SiglipVisionModel.from_pretrained(folder) if kind == "siglip_vision" else \
        SiglipModel.from_pretrained(folder).vision_model
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref(pixel_values=images, output_hidden_states=True).hidden_states[-2]
        got = tower(images)
    assert got.shape == (2, 16, 32) and tower.hidden_size == 32 and tower.num_patches == 16
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with torch.enable_grad():  # the autograd path (training) gives the same
        torch.testing.assert_close(tower(images), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="no CLS"):
        build_lr_tower(folder, str(folder), _settings(mm_vision_select_feature="cls_patch"))


def test_siglip2_tower_matches_transformers(tmp_path):
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    from mgm.model.vision_encoder import load_clip_folder as _load_clip_folder
    from mgm.model.vision.kinds import build_lr_tower, lr_kind

    torch.manual_seed(0)
    ref = Siglip2VisionModel(Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=2, patch_size=8, num_patches=16)).eval()
    ref.save_pretrained(tmp_path)
    assert lr_kind(tmp_path) == "siglip2"
    tower = build_lr_tower(tmp_path, str(tmp_path), _settings(mm_vision_select_layer=-1))
    _load_clip_folder(tower, tmp_path)
    images = torch.randn(2, 3, 32, 32)
    p = 8  # the SigLIP 2 processor's patchification
    patches = images.reshape(2, 3, 4, p, 4, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, p * p * 3)
    with torch.no_grad():
        out = ref(pixel_values=patches, pixel_attention_mask=torch.ones(2, 16, dtype=torch.long),
                  spatial_shapes=torch.tensor([[4, 4], [4, 4]]), output_hidden_states=True)
        got = tower(images)
    torch.testing.assert_close(got, out.hidden_states[-1], rtol=1e-4, atol=1e-4)


def test_lr_kind_comes_from_config_not_path(tmp_path):
    from mgm.model.vision.kinds import lr_kind

    folder = tmp_path / "siglip-so400m-patch14-384"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    assert lr_kind(folder) == "clip"
    (folder / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(UserError, match="valid: .*siglip"):
        lr_kind(folder)


@pytest.mark.parametrize("kind", ["timm_convnext", "timm_convnext_v2"])
def test_timm_convnext_tower_matches_timm(towers, kind):
    from safetensors.torch import load_file
    from timm.models.convnext import ConvNeXt

    from mgm.model.vision.convnext import ConvNeXtTower
    from mgm.model.vision.kinds import hr_folder_state, hr_spec_from

    folder = towers[kind]
    spec = hr_spec_from(folder)
    assert spec.dims == (8, 16, 32, 64) and spec.use_grn == (kind == "timm_convnext_v2")
    tower = ConvNeXtTower(spec, drop_path=False).eval()
    tower.load_state_dict(hr_folder_state(folder), strict=True)
    v2 = kind == "timm_convnext_v2"
    ref = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=0, ls_init_value=None if v2 else 1e-6,
                   use_grn=v2).eval()
    ref.load_state_dict(load_file(str(folder / "model.safetensors")))
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = tower.stage_maps(images)  # the fast (fused, channels-last) path where the block allows it
        x = ref.stem(images)
        for stage, got in zip(ref.stages, maps):
            x = stage(x)
            torch.testing.assert_close(got, x, rtol=1e-4, atol=1e-4)
        assert tower(images).shape == (1, 120, 16, 16)


def test_hr_kind_error_lists_the_architectures(tmp_path):
    from mgm.model.vision.kinds import hr_spec_from

    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224"}))
    with pytest.raises(UserError, match="convnextv2_large"):
        hr_spec_from(tmp_path)


def test_siglip_image_processor_resizes_to_the_square(towers):
    from PIL import Image

    from mgm.model.builder import image_processor_for_tower

    processor = image_processor_for_tower(towers["siglip"], 32)
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    x = processor.preprocess_one(image)
    assert x.shape == (3, 32, 32)  # no crop: the whole wide image is squeezed in
    torch.testing.assert_close(x[0], torch.ones(32, 32))  # red 1.0 under mean = std = 0.5
    assert processor.at_size(64).preprocess_one(image).shape == (3, 64, 64)


# -- chat_template ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from mgm.zoo.any_llm import ANY_LLMS, build_any_tokenizer

    root = tmp_path_factory.mktemp("any_tok")
    return {arch: build_any_tokenizer(arch, root / arch) for arch in ANY_LLMS}


TURNS = [{"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": "red"},
         {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "a circle"}]


@pytest.mark.parametrize("arch", ["qwen3", "gemma3", "phi3", "smollm3", "olmo2", "llama3_2"])
def test_chat_template_masking_supervises_replies_and_turn_ends(tokenizers, arch):
    from mgm.chat_template_conversation import JinjaConversation
    from mgm.data.preprocess import tokenize_conversation

    tok = tokenizers[arch]
    ids, labels, prompt = tokenize_conversation(TURNS, tok, "chat_template", has_image=True)
    msgs = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in TURNS]
    expected = tok.apply_chat_template(msgs, tokenize=False)
    footer = JinjaConversation.from_tokenizer(tok).turn_footer()
    adds_bos = tok("a").input_ids != tok("a", add_special_tokens=False).input_ids
    if adds_bos and expected.startswith(tok.bos_token):
        expected = expected[len(tok.bos_token):]  # the tokenizer adds BOS itself: not twice
    assert prompt == expected
    assert ids[:2].tolist() != [tok.bos_token_id] * 2  # never two BOS in front
    supervised = tok.decode(ids[labels != IGNORE_INDEX])
    assert supervised == "red" + footer + "a circle" + footer
    assert "<think>" not in supervised and "What color" not in supervised


def test_chat_template_inference_matches_training_header(tokenizers):
    from mgm.chat_template_conversation import conversation_for

    conv = conversation_for("chat_template", tokenizers["qwen3"])
    conv.append_message(conv.roles[0], "<image>\nHi")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == "<|im_start|>user\n<image>\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert conv.stop_strings() == ["<|im_end|>"]
    assert conversation_for("chat_template", tokenizers["llama3_2"]).stop_strings() == ["<|eot_id|>"]


def test_chat_template_needs_a_template(tokenizers):
    from mgm.data.tokenizer_setup import setup_tokenizer_for_version

    tok = tokenizers["phi3"]
    saved, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(UserError, match="has none"):
            setup_tokenizer_for_version(tok, "chat_template")
    finally:
        tok.chat_template = saved
    assert setup_tokenizer_for_version(tokenizers["llama3_2"], "chat_template")[1:] == ("chat_template", True)


# -- the two-stage recipe --------------------------------------------------------------------------


def _recipe(tmp_path, towers, arch, lr, hr, monkeypatch, capsys, lora=False):
    from mgm.serve import cli
    from mgm.train.train import train
    from mgm.zoo.any_llm import build_any_llm

    llm = build_any_llm(arch, tmp_path / "llm")
    data = make_dataset(tmp_path / "data", n=8)
    common = ["--model_name_or_path", str(llm), "--vision_tower", str(towers[lr]), "--vision_tower_aux",
              str(towers[hr]), "--mm_projector_type", "mlp2x_gelu", "--mm_use_im_start_end", "False",
              "--mm_use_im_patch_token", "False", "--image_size_aux", "64", "--image_folder", str(data),
              "--report_to", "none", "--dataloader_num_workers", "0", "--model_max_length", "256",
              "--per_device_train_batch_size", "4", "--disable_tqdm", "True", "--max_steps", "2"]
    train(argv=[*common, "--version", "plain", "--tune_mm_mlp_adapter", "True", "--learning_rate", "1e-3",
                "--data_path", str(data / "stage1.json"), "--output_dir", str(tmp_path / "s1")])
    stage2 = [*common, "--version", "chat_template", "--pretrain_mm_mlp_adapter", str(tmp_path / "s1" / "mm_projector.bin"),
              "--data_path", str(data / "stage2.json"), "--output_dir", str(tmp_path / "s2")]
    if lora:
        stage2 += ["--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8"]
    train(argv=stage2)
    cfg = json.loads((tmp_path / "s2" / "config.json").read_text())
    assert cfg["conv_template"] == "chat_template" and "{%" in cfg["conv_chat_template"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("What color is the shape?\n"))
    argv = ["--model-path", str(tmp_path / "s2"), "--image-file", str(data / "images" / "0000.png"), "--device", "cpu",
            "--temperature", "0", "--max-new-tokens", "4", "--debug"]
    if lora:
        argv += ["--model-base", str(llm)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("'outputs':") == 1 and "What color is the shape?" in out
    return cfg, out


def test_qwen3_siglip_openclip_two_stages_then_cli(tmp_path, towers, monkeypatch, capsys):
    cfg, out = _recipe(tmp_path, towers, "qwen3", "siglip", "openclip", monkeypatch, capsys)
    assert cfg["model_type"] == "mgm_qwen3" and cfg["architectures"] == ["MGMQwen3ForCausalLM"]
    assert cfg["mm_hidden_size"] == 32 and cfg["mm_hidden_size_aux"] == 120  # sizes follow the towers
    assert "<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n" in out  # the trained header, at inference too

    # the transformers pipeline renders the same prompt with the recorded template (image parts -> <image>)
    from PIL import Image
    from transformers import pipeline

    pipe = pipeline("image-text-to-text", model=str(tmp_path / "s2"))
    assert type(pipe.model).__name__ == "MGMQwen3ForCausalLM"
    msgs = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (40, 40), (200, 20, 20))},
                                         {"type": "text", "text": "What color is the shape?"}]}]
    prompt = pipe.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert prompt == ("<|im_start|>user\n<image>\nWhat color is the shape?<|im_end|>\n"
                      "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    answer = pipe(text=msgs, max_new_tokens=3, generate_kwargs={"do_sample": False})[0]["generated_text"][-1]
    assert answer["role"] == "assistant"


@pytest.mark.slow
@pytest.mark.parametrize("arch,lr,hr,lora", [
    ("qwen3_moe", "siglip_vision", "timm_convnext", False),
    ("gemma3", "siglip", "timm_convnext_v2", False),
    ("phi3", "siglip", "openclip", True),
    ("smollm3", "clip", "openclip", False),
    ("olmo2", "clip", "timm_convnext", False),
    ("llama3_2", "siglip", "openclip", True),
])
def test_architectures_two_stages_then_cli(tmp_path, towers, monkeypatch, capsys, arch, lr, hr, lora):
    _recipe(tmp_path, towers, arch, lr, hr, monkeypatch, capsys, lora=lora)


def test_qwen3_siglip_recipe_script_has_the_released_hyper_parameters(tmp_path):
    from pathlib import Path

    from test_train_args import _global_batch, _run_with_stub

    from mgm.train.args import check_flags, parse_args

    script = Path(__file__).resolve().parents[1] / "scripts" / "anyllm" / "stage_1_2_full_qwen3_siglip_convnext_l.sh"
    calls = _run_with_stub(script, tmp_path, {})
    assert len(calls) == 2
    for call, (version, lr, batch) in zip(calls, (("plain", 1e-3, 256), ("chat_template", 2e-5, 128))):
        assert call[0] == "mgm/train/train_mem.py"
        flags = call[1:]
        ns = check_flags(flags)
        assert (ns.version, ns.learning_rate, _global_batch(flags, 1)) == (version, lr, batch)
        assert ns.model_name_or_path.endswith("Qwen3-8B") and ns.vision_tower.endswith("siglip-so400m-patch14-384")
        assert ns.image_size_aux == 864 and ns.model_max_length == 2048
        ds_free = [f for i, f in enumerate(flags) if f != "--deepspeed" and (i == 0 or flags[i - 1] != "--deepspeed")]
        parse_args(ds_free + ["--output_dir", str(tmp_path / "x")])


def test_mining_windows_must_tile_the_hr_map(towers):
    from mgm.model.families import classes_for_model_type

    config_cls, _, causal_cls = classes_for_model_type("mgm_qwen3")
    config = config_cls(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=16, mm_vision_tower=str(towers["siglip"]),
                        mm_vision_tower_aux=str(towers["timm_convnext"]), mm_projector_type="mlp2x_gelu",
                        image_size_aux=64)
    model = causal_cls(config).eval()
    assert (config.mm_hidden_size, config.mm_hidden_size_aux) == (32, 120)  # sizes follow the towers
    with torch.no_grad():
        assert model.encode_images(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 64, 64)).shape == (1, 16, 32)
        with pytest.raises(UserError, match="multiple of 16"):
            model.encode_images(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 72, 72))
