"""Every original module path that scripts and forks import exists and defines the original's names."""
from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

# module path -> names the original defined there (the ones user code imports)
ORIGINAL_NAMES = {
    "mgm": ["MGMLlamaForCausalLM"],
    "mgm.utils": ["build_logger", "StreamToLogger", "disable_torch_init", "violates_moderation",
                  "pretty_print_semaphore", "server_error_msg", "moderation_msg"],
    "mgm.constants": ["IMAGE_TOKEN_INDEX", "DEFAULT_IMAGE_TOKEN", "DEFAULT_IM_START_TOKEN", "DEFAULT_IM_END_TOKEN",
                      "IMAGE_PLACEHOLDER", "IGNORE_INDEX", "LOGDIR"],
    "mgm.conversation": ["conv_templates", "SeparatorStyle", "Conversation", "default_conversation"],
    "mgm.mm_utils": ["process_images", "tokenizer_image_token", "get_model_name_from_path",
                     "KeywordsStoppingCriteria", "load_image_from_base64", "expand2square"],
    "mgm.model": ["MGMLlamaForCausalLM", "MGMGemmaForCausalLM", "MGMMistralForCausalLM", "MGMMixtralForCausalLM"],
    "mgm.model.builder": ["load_pretrained_model"],
    "mgm.model.mgm_arch": ["MGMMetaModel", "MGMMetaForCausalLM"],
    "mgm.model.language_model.mgm_llama": ["MGMConfig", "MGMLlamaModel", "MGMLlamaForCausalLM"],
    "mgm.model.language_model.mgm_gemma": ["MGMConfig", "MGMGemmaModel", "MGMGemmaForCausalLM"],
    "mgm.model.language_model.mgm_mistral": ["MGMConfig", "MGMMistralModel", "MGMMistralForCausalLM"],
    "mgm.model.language_model.mgm_mixtral": ["MGMConfig", "MGMMixtralModel", "MGMMixtralForCausalLM"],
    "mgm.model.multimodal_encoder.builder": ["build_vision_tower", "build_vision_tower_aux"],
    "mgm.model.multimodal_encoder.clip_encoder": ["CLIPVisionTower"],
    "mgm.model.multimodal_encoder.openclip_encoder": ["OpenCLIPVisionTower"],
    "mgm.model.multimodal_projector.builder": ["build_vision_projector", "IdentityMap", "SimpleResBlock"],
    "mgm.train.llava_trainer": ["LLaVATrainer", "LengthGroupedSampler", "get_length_grouped_indices",
                                "get_modality_length_grouped_indices", "split_to_even_chunks", "maybe_zero_3",
                                "get_mm_adapter_state_maybe_zero_3"],
    "mgm.train.train": ["train"],
    "mgm.eval.run_llava": ["eval_model", "image_parser", "load_image", "load_images"],
    "mgm.eval.model_vqa_loader": [],
}


@pytest.mark.parametrize("module", sorted(ORIGINAL_NAMES))
def test_original_module_path_defines_the_original_names(module):
    mod = importlib.import_module(module)
    missing = [name for name in ORIGINAL_NAMES[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lacks {missing}"


def test_per_family_config_is_that_familys_config():
    from mgm.model.language_model import mgm_gemma, mgm_llama, mgm_mixtral

    assert mgm_llama.MGMConfig.model_type == "mgm"
    assert mgm_gemma.MGMConfig.model_type == "mgm_gemma"
    assert mgm_mixtral.MGMConfig.model_type == "mgm_mixtral"
    assert mgm_gemma.MGMGemmaForCausalLM.config_class is mgm_gemma.MGMConfig


def test_tower_and_projector_builders_from_a_config(tiny_zoo, loaded_models):
    from mgm.model.multimodal_encoder.builder import build_vision_tower, build_vision_tower_aux
    from mgm.model.multimodal_projector.builder import IdentityMap, build_vision_projector

    _, model, _, _ = loaded_models("MGM-Tiny-Vicuna")
    cfg = model.config
    tower = build_vision_tower(cfg)
    aux = build_vision_tower_aux(cfg).eval()  # a fresh module trains (drop-path on), as in the original
    x = torch.randn(1, 3, tower.config.image_size, tower.config.image_size)
    with torch.no_grad():
        torch.testing.assert_close(tower(x), model.get_vision_tower()(x))
        hr = torch.randn(1, 3, cfg.image_size_aux, cfg.image_size_aux)
        torch.testing.assert_close(aux(hr), model.get_vision_tower_aux()(hr))
    assert build_vision_tower(cfg, delay_load=True).hidden_size == tower.hidden_size
    with pytest.raises(ValueError, match="Not find vision tower"):
        build_vision_tower(SimpleNamespace(mm_vision_tower="/no/such/tower"))

    proj = build_vision_projector(cfg)
    assert [type(m).__name__ for m in proj] == ["Linear", "GELU", "Linear"]
    assert proj[0].in_features == cfg.mm_hidden_size and proj[2].out_features == cfg.hidden_size
    ident = build_vision_projector(SimpleNamespace(mm_projector_type="identity", mm_hidden_size=8, hidden_size=8))
    assert isinstance(ident, IdentityMap)


def test_llava_trainer_helpers():
    from mgm.train.llava_trainer import get_mm_adapter_state_maybe_zero_3, maybe_zero_3

    lin = torch.nn.Linear(2, 3)
    state = get_mm_adapter_state_maybe_zero_3(lin.named_parameters(), ["weight"])
    assert list(state) == ["weight"] and state["weight"].device.type == "cpu"
    assert torch.equal(maybe_zero_3(lin.bias), lin.bias.detach())


def test_run_llava_answers_like_the_engine(tiny_zoo, loaded_models, tmp_path, capsys):
    from PIL import Image

    from mgm.eval import run_llava

    path = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(path)
    ckpt = tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]
    assert run_llava.main(["--model-path", ckpt, "--image-file", str(path), "--query", "What colour?",
                           "--temperature", "0", "--max_new_tokens", "5", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.strip()

    from mgm.conversation import conv_templates
    from mgm.serve.engine import GenerationParams, InferenceEngine, Request

    tok, model, proc, ctx = loaded_models("MGM-Tiny-Vicuna")
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat colour?")
    conv.append_message(conv.roles[1], None)
    want = InferenceEngine(tok, model, proc, ctx).generate(
        [Request(conv.get_prompt(), [Image.open(path).convert("RGB")], GenerationParams(0, max_new_tokens=5))])
    assert printed == want[0].strip()
