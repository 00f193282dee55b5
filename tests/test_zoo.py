"""Tests of the tiny model zoo (mgm.zoo): tokenizers, towers, base LLMs and literal MGM checkpoints.

The zoo is conftest's session-wide `tiny_zoo` (built once). Run: `.venv/bin/pytest tests/test_zoo.py`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mgm.zoo.checkpoint import MGM_PREFIXES, load_state_dict
from mgm.zoo.llms import LLM_FAMILIES, LLM_SPECS
from mgm.zoo.tiny import CHECKPOINTS, build_tiny_zoo, main
from mgm.zoo.tokenizers import LLAMA3_SPECIAL_TOKENS, chat_special_tokens, family_special_tokens

CLIP_PREFIX = "model.vision_tower.vision_tower."
MGM_KEYS_RELEASED = {  # docs/original.md#config-keys, values of released base checkpoints scaled to the tiny towers
    "mm_hidden_size": 32, "mm_hidden_size_aux": 120, "mm_projector_type": "mlp2x_gelu", "use_mm_proj": True,
    "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad",
    "image_grid_pinpoints": None, "optimize_vision_tower": False, "optimize_vision_tower_aux": False,
    "tokenizer_padding_side": "right", "tokenizer_model_max_length": 512, "tune_mm_mlp_adapter": False,
    "freeze_mm_mlp_adapter": False, "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
    "mm_projector_lr": None, "use_cache": True,
}
MODEL_TYPES = {"vicuna": "mgm", "llama3": "mgm", "yi": "mgm", "gemma": "mgm_gemma", "mistral": "mgm_mistral",
               "mixtral": "mgm_mixtral"}
ARCHITECTURES = {"vicuna": "MGMLlamaForCausalLM", "llama3": "MGMLlamaForCausalLM", "yi": "MGMLlamaForCausalLM",
                 "gemma": "MGMGemmaForCausalLM", "mistral": "MGMMistralForCausalLM",
                 "mixtral": "MGMMixtralForCausalLM"}
S_USER = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")
S_VISION = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
            "the user provides, and assist the user with a variety of tasks using natural language.")
# Rendered prompts of docs/original.md#templates (question Q), one per tokenizer, with an answer turn where the template has one.
PROMPTS = {
    "vicuna": S_USER + " USER: <image>\nWhat is the red circle? ASSISTANT: A dog.</s>USER: Why? ASSISTANT:",
    "mistral": "[INST] <image>\nWhat is the red circle? [/INST] A dog </s><s>[INST] Why? [/INST]",
    "yi": "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is it?<|im_end|>"
          "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>system<|end_header_id|>\n\n" + S_VISION + "<|eot_id|><|start_header_id|>user"
              "<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|><|start_header_id|>system<|end_header_id|>\n\n",
    "gemma": "<start_of_turn>user\n<image>\nWhat is the red circle?<end_of_turn>\n<start_of_turn>model\nA dog."
             "<end_of_turn>\n<eos>",
}


@pytest.fixture(scope="session")
def zoo(tiny_zoo: dict) -> dict:
    """The whole tiny zoo (conftest's session fixture)."""
    return tiny_zoo


def _autotokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# ---------------------------------------------------------------------------------------------------- manifest


def test_manifest_lists_every_artifact(zoo: dict) -> None:
    root = Path(zoo["root"])
    assert json.loads((root / "manifest.json").read_text()) == zoo
    assert (root / "README.md").read_text().startswith("Build the tiny MGM model zoo")
    assert set(zoo["llms"]) == set(LLM_FAMILIES)
    assert set(zoo["checkpoints"]) == {name for name, _, _ in CHECKPOINTS}
    assert set(zoo["tokenizers"]) == {"vicuna", "mistral", "gemma", "llama3", "yi"}
    for path in [*zoo["towers"].values(), *zoo["llms"].values(),
                 *(e["path"] for e in zoo["checkpoints"].values()), *(e["path"] for e in zoo["stage1"].values())]:
        assert Path(path).is_dir() and Path(path).is_absolute(), path
    assert Path(zoo["towers"]["clip"]).relative_to(root).parts[0] == "OpenAI"
    assert "openai" in zoo["towers"]["clip"].lower()
    assert "openclip" in zoo["towers"]["convnext"].lower() and "convnext" in zoo["towers"]["convnext"]
    assert zoo["build_seconds"] < 60


def test_rebuild_is_reused_and_deterministic(zoo: dict, tmp_path: Path) -> None:
    root = Path(zoo["root"])
    weights = Path(zoo["checkpoints"]["MGM-Tiny-Vicuna-HD"]["path"]) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_tiny_zoo(root, seed=0) == zoo
    assert weights.stat().st_mtime_ns == stamp  # reused, not rewritten

    other = build_tiny_zoo(tmp_path / "again", seed=0, families=["vicuna"])
    assert other["families"] == ["vicuna"] and set(other["llms"]) == {"vicuna"}
    assert all(zoo["checkpoints"][n]["family"] == "vicuna" for n in other["checkpoints"])
    for rel in ("LLM/vicuna/tokenizer.model", "LLM/vicuna/model.safetensors", "OpenAI/clip-vit-tiny-patch4-32/"
                "model.safetensors", "OpenAI/openclip-convnext-tiny/open_clip_pytorch_model.bin"):
        if rel.endswith(".bin"):
            a, b = (torch.load(r / rel, weights_only=True) for r in (root, tmp_path / "again"))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
        else:
            assert (root / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    a = load_state_dict(zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"])
    b = load_state_dict(other["checkpoints"]["MGM-Tiny-Vicuna"]["path"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_rejects_unknown_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--out", str(tmp_path / "z"), "--families", "vicuna", "llama9"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "llama9" in err and "vicuna" in err and "Traceback" not in err
    assert not (tmp_path / "z" / "manifest.json").exists()


def test_command_prints_only_its_result_line(tmp_path: Path) -> None:
    # Without DS_ACCELERATOR (a newcomer's shell) DeepSpeed, pulled in by save_pretrained, must stay quiet.
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    proc = subprocess.run([sys.executable, "-m", "mgm.zoo.tiny", "--out", str(tmp_path / "z"), "--families", "vicuna"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "" and proc.stdout.strip().startswith("tiny zoo ready:"), proc.stdout + proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("kind", ["vicuna", "mistral", "gemma", "llama3", "yi"])
def test_tokenizer_loads_offline_with_single_id_special_tokens(zoo: dict, kind: str) -> None:
    tok = _autotokenizer(zoo["tokenizers"][kind])
    roles = family_special_tokens(kind)
    assert tok.bos_token == roles["bos"] and tok.eos_token == roles["eos"]
    assert tok.unk_token == roles["unk"] and tok.pad_token == roles["pad"]
    for token in [*chat_special_tokens(kind), *(t for t in roles.values() if t)]:
        ids = tok(token, add_special_tokens=False).input_ids
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [token], (token, ids)
    ids = tok(PROMPTS[kind]).input_ids
    if kind == "yi":
        assert ids[0] != tok.bos_token_id  # Yi adds no BOS
    else:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1 + PROMPTS[kind].count(roles["bos"])
    text = tok.decode(ids, skip_special_tokens=False)
    assert "What is" in text and "<image>" in text
    # every special token in the prompt is one id, in order
    specials = [t for t in tok.convert_ids_to_tokens(ids) if t in set(chat_special_tokens(kind)) | {roles["eos"]}]
    expected = [t for t in _split_specials(PROMPTS[kind], set(chat_special_tokens(kind)) | {roles["eos"]})]
    assert specials == expected


def _split_specials(text: str, specials: set[str]) -> list[str]:
    out, i = [], 0
    while i < len(text):
        hit = next((s for s in sorted(specials, key=len, reverse=True) if text.startswith(s, i)), None)
        if hit:
            out.append(hit)
            i += len(hit)
        else:
            i += 1
    return out


def test_tokenizer_classes_and_files(zoo: dict) -> None:
    from transformers import GemmaTokenizer, LlamaTokenizer

    assert isinstance(_autotokenizer(zoo["tokenizers"]["vicuna"]), LlamaTokenizer)
    assert isinstance(_autotokenizer(zoo["tokenizers"]["gemma"]), GemmaTokenizer)
    files = {k: sorted(p.name for p in Path(v).glob("tokenizer*")) for k, v in zoo["tokenizers"].items()}
    assert files["vicuna"] == ["tokenizer.model", "tokenizer_config.json"]  # as lmsys/vicuna-7b-v1.5
    assert files["llama3"] == ["tokenizer.json", "tokenizer_config.json"]
    for kind in ("mistral", "gemma", "yi"):
        assert files[kind] == ["tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    cfg = {k: json.loads((Path(v) / "tokenizer_config.json").read_text()) for k, v in zoo["tokenizers"].items()}
    assert cfg["vicuna"]["legacy"] is False and cfg["mistral"]["legacy"] is True
    assert cfg["vicuna"]["add_bos_token"] is True and cfg["yi"]["add_bos_token"] is False
    assert cfg["llama3"]["tokenizer_class"] == "PreTrainedTokenizerFast"
    llama3 = _autotokenizer(zoo["tokenizers"]["llama3"])
    assert [llama3.convert_tokens_to_ids(t) for t in LLAMA3_SPECIAL_TOKENS] == list(range(700, 711))


@pytest.mark.parametrize("kind", ["vicuna", "mistral", "gemma", "yi"])
def test_sentencepiece_and_transformers_agree(zoo: dict, kind: str) -> None:
    import sentencepiece as spm

    folder = Path(zoo["tokenizers"][kind])
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tok = _autotokenizer(str(folder))
    for text in ("What is the red circle? A dog, 123 stars!", "Describe the image in detail.", "ünïcode ✓ 2024"):
        assert tok(text, add_special_tokens=False).input_ids == sp.encode(text), text
    assert len(tok) == sp.get_piece_size()


def test_mgm_checkpoint_tokenizers_carry_training_pad_tokens(zoo: dict) -> None:
    expected_pad = {"vicuna": "<unk>", "mistral": "<unk>", "mixtral": "<unk>", "yi": "<unk>", "gemma": "<pad>",
                    "llama3": "<|reserved_special_token_0|>"}
    for name, entry in zoo["checkpoints"].items():
        tok = _autotokenizer(entry["path"])
        assert tok.pad_token == expected_pad[entry["family"]], name
        assert tok.model_max_length == 512 and tok.padding_side == "right", name
        base = _autotokenizer(zoo["llms"][entry["family"]])
        assert tok("Hi there USER:").input_ids == base("Hi there USER:").input_ids, name
    llama3 = _autotokenizer(zoo["checkpoints"]["MGM-Tiny-LLaMA3"]["path"])
    assert llama3.unk_token == llama3.pad_token == "<|reserved_special_token_0|>"


# ---------------------------------------------------------------------------------------------------- towers


def test_clip_tower_folder(zoo: dict) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionModel
    from PIL import Image

    folder = zoo["towers"]["clip"]
    model = CLIPVisionModel.from_pretrained(folder, dtype=torch.float32).eval()
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.image_size, cfg.patch_size) == (32, 3, 2, 64, 32, 4)
    file_state = load_state_dict(folder)
    assert any(k.startswith("text_model.") for k in file_state)  # a full CLIPModel folder, like openai's
    for key, value in model.state_dict().items():
        assert torch.equal(file_state[f"vision_model.{key}"], value), key
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32), output_hidden_states=True)
    assert out.hidden_states[-2].shape == (2, 65, 32)

    raw = json.loads((Path(folder) / "preprocessor_config.json").read_text())
    assert raw["crop_size"] == {"height": 32, "width": 32} and raw["size"] == {"shortest_edge": 32}
    assert raw["resample"] == 3 and raw["image_processor_type"] == "CLIPImageProcessor"
    proc = CLIPImageProcessor.from_pretrained(folder)
    assert list(proc.image_mean) == [0.48145466, 0.4578275, 0.40821073]
    assert list(proc.image_std) == [0.26862954, 0.26130258, 0.27577711]
    pixels = proc(Image.new("RGB", (48, 40), (255, 0, 0)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    assert torch.allclose(pixels[0, :, 0, 0], (torch.tensor([1.0, 0, 0]) - torch.tensor(proc.image_mean))
                          / torch.tensor(proc.image_std), atol=1e-5)


def test_convnext_file_has_open_clip_keys(zoo: dict) -> None:
    from timm.models.convnext import ConvNeXt

    folder = Path(zoo["towers"]["convnext"])
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    vision = cfg["model_cfg"]["vision_cfg"]
    assert (vision["depths"], vision["dims"], vision["image_size"]) == ([1, 1, 1, 1], [8, 16, 32, 64], 64)
    assert cfg["preprocess_cfg"] == {"mean": [0.48145466, 0.4578275, 0.40821073],
                                     "std": [0.26862954, 0.26130258, 0.27577711]}
    state = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
    for key in ("visual.trunk.stem.0.weight", "visual.trunk.stem.1.bias", "visual.trunk.stages.1.downsample.0.weight",
                "visual.trunk.stages.3.downsample.1.bias", "visual.trunk.stages.2.blocks.0.conv_dw.weight",
                "visual.trunk.stages.0.blocks.0.mlp.fc2.bias", "visual.trunk.stages.3.blocks.0.gamma",
                "visual.head.mlp.fc1.weight", "token_embedding.weight", "positional_embedding", "text_projection",
                "logit_scale"):
        assert key in state, key
    assert not any(k.startswith("visual.trunk.stages.0.downsample") for k in state)
    assert state["visual.trunk.stem.0.weight"].shape == (8, 3, 4, 4)
    assert state["visual.trunk.stages.2.blocks.0.conv_dw.weight"].shape == (32, 1, 7, 7)
    # Non-trivial values where a default init would be constant.
    assert state["visual.trunk.stages.3.blocks.0.gamma"].std() > 0.05
    assert (state["visual.trunk.stem.1.weight"] - 1).abs().max() > 0.05

    trunk = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=0)
    ours = {k[len("visual.trunk."):]: v for k, v in state.items()
            if k.startswith(("visual.trunk.stem.", "visual.trunk.stages."))}
    wanted = {k for k in trunk.state_dict() if k.startswith(("stem.", "stages."))}
    assert set(ours) == wanted
    missing, unexpected = trunk.load_state_dict(ours, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing)
    trunk.eval()
    x = trunk.stem(torch.randn(1, 3, 64, 64))
    sides, channels = [], 0
    for stage in trunk.stages:
        x = stage(x)
        sides.append(x.shape[-1])
        channels += x.shape[1]
    assert sides == [16, 8, 4, 2] and channels == 120


def test_convnext_file_loads_strictly_into_open_clip(zoo: dict) -> None:
    open_clip = pytest.importorskip("open_clip")
    from timm.models import convnext as timm_convnext
    from timm.models import is_model, register_model

    folder = Path(zoo["towers"]["convnext"])
    cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    vision = cfg["vision_cfg"]
    name = vision["timm_model_name"]
    if not is_model(name):
        def factory(pretrained: bool = False, **kw):
            args = dict(depths=tuple(vision["depths"]), dims=tuple(vision["dims"]))
            return timm_convnext._create_convnext(name, pretrained=pretrained, **dict(args, **kw))
        factory.__name__ = name
        factory.__module__ = timm_convnext.__name__
        register_model(factory)
    vision_cfg = {k: v for k, v in vision.items() if k not in ("depths", "dims")}
    model = open_clip.model.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=vision_cfg, text_cfg=cfg["text_cfg"])
    state = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------------- LLMs


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_llm_folder_loads(zoo: dict, family: str) -> None:
    from transformers import AutoModelForCausalLM

    folder = Path(zoo["llms"][family])
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = _autotokenizer(str(folder))
    spec = LLM_SPECS[family]
    assert type(model).__name__ == spec.hf_class
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.max_position_embeddings) == (64, 2, 4, 128, 512)
    assert cfg.num_key_value_heads == spec.num_key_value_heads
    assert cfg.vocab_size == len(tok)
    ids = tok("What is the red circle?", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and logits.std() > 0.1
    gen = json.loads((folder / "generation_config.json").read_text())
    if family == "llama3":
        assert gen["eos_token_id"] == [tok.convert_tokens_to_ids("<|end_of_text|>"),
                                       tok.convert_tokens_to_ids("<|eot_id|>")]
    else:
        assert gen["eos_token_id"] == tok.eos_token_id
    raw = json.loads((folder / "config.json").read_text())
    if family == "gemma":
        assert raw["hidden_act"] == "gelu" and raw["hidden_activation"] is None and raw["head_dim"] == 16
    if family == "mixtral":
        assert (cfg.num_local_experts, cfg.num_experts_per_tok) == (4, 2)
    if family in ("mistral", "mixtral"):
        assert cfg.sliding_window is None


# ---------------------------------------------------------------------------------------------------- MGM checkpoints


def test_mgm_configs_have_every_released_key(zoo: dict) -> None:
    for name, entry in zoo["checkpoints"].items():
        cfg = json.loads((Path(entry["path"]) / "config.json").read_text())
        family = entry["family"]
        for key, value in MGM_KEYS_RELEASED.items():
            assert cfg[key] == value, (name, key)
        legacy = entry["legacy_names"]
        assert cfg["model_type"] == (MODEL_TYPES[family].replace("mgm", "mini_gemini") if legacy
                                     else MODEL_TYPES[family]), name
        assert cfg["architectures"] == [ARCHITECTURES[family].replace("MGM", "MiniGemini") if legacy
                                        else ARCHITECTURES[family]], name
        hd = name.endswith("-HD")
        assert (cfg["image_grid"], cfg["image_global"], cfg["image_size_aux"]) == ((2, True, 128) if hd
                                                                                   else (1, False, 64)), name
        # released (transformers 4.3x) LLM keys, not transformers-5 ones
        assert "rope_theta" in cfg and "torch_dtype" in cfg and "rope_parameters" not in cfg, name
        llm = json.loads((Path(zoo["llms"][family]) / "config.json").read_text())
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "vocab_size", "bos_token_id", "eos_token_id", "tie_word_embeddings"):
            assert cfg[key] == llm[key], (name, key)
        assert cfg["rope_theta"] == llm["rope_parameters"]["rope_theta"], name
        if entry["tower_paths"] == "absolute":
            assert cfg["mm_vision_tower"] == zoo["towers"]["clip"]
            assert cfg["mm_vision_tower_aux"] == zoo["towers"]["convnext"]
        else:
            assert cfg["mm_vision_tower"] == "model_zoo/OpenAI/clip-vit-tiny-patch4-32"
            assert cfg["mm_vision_tower_aux"] == "model_zoo/OpenAI/openclip-convnext-tiny"
            # resolves from the zoo's parent once the zoo folder is called model_zoo, as in the repository
            rel = Path(cfg["mm_vision_tower"]).relative_to("model_zoo")
            assert (Path(zoo["root"]) / rel).is_dir()
    gemma = json.loads((Path(zoo["checkpoints"]["MGM-Tiny-Gemma"]["path"]) / "config.json").read_text())
    assert gemma["hidden_act"] == "gelu" and "hidden_activation" not in gemma


def test_legacy_config_builds_the_same_llm(zoo: dict) -> None:
    """transformers 5 reads each released-style config into the same model: same logits on the same weights."""
    import transformers

    for name in ("MGM-Tiny-Vicuna", "MGM-Tiny-LLaMA3", "MGM-Tiny-Gemma", "MGM-Tiny-Mistral", "MGM-Tiny-Mixtral"):
        entry = zoo["checkpoints"][name]
        spec = LLM_SPECS[entry["family"]]
        raw = json.loads((Path(entry["path"]) / "config.json").read_text())
        raw = {k: v for k, v in raw.items() if not k.startswith(("mm_", "image_", "_name"))}
        raw["model_type"] = spec.hf_model_type
        config_cls = getattr(transformers, spec.hf_class.replace("ForCausalLM", "Config"))
        model = getattr(transformers, spec.hf_class)(config_cls(**raw)).eval()
        state = {k: v for k, v in load_state_dict(entry["path"]).items() if not k.startswith(MGM_PREFIXES)}
        missing, unexpected = model.load_state_dict(_to_runtime_keys(model, state), strict=False)
        assert not unexpected and all("rotary" in k or k == "lm_head.weight" for k in missing), (name, missing)
        ref = transformers.AutoModelForCausalLM.from_pretrained(zoo["llms"][entry["family"]], dtype=torch.float32)
        ids = torch.tensor([[1, 5, 9, 30, 200, 17]])
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, ref.eval()(ids).logits, rtol=1e-5, atol=1e-5)


def _to_runtime_keys(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released Mixtral expert keys -> transformers 5's fused layout (gate_up_proj / down_proj)."""
    if not any(".block_sparse_moe." in k for k in state):
        return state
    out = {k: v for k, v in state.items() if ".block_sparse_moe.experts." not in k}
    out = {k.replace(".block_sparse_moe.gate.", ".mlp.gate."): v for k, v in out.items()}
    n_layers = model.config.num_hidden_layers
    n_experts = model.config.num_local_experts
    for i in range(n_layers):
        p = f"model.layers.{i}.block_sparse_moe.experts"
        w1 = [state[f"{p}.{e}.w1.weight"] for e in range(n_experts)]
        w3 = [state[f"{p}.{e}.w3.weight"] for e in range(n_experts)]
        w2 = [state[f"{p}.{e}.w2.weight"] for e in range(n_experts)]
        out[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack([torch.cat([a, b]) for a, b in zip(w1, w3)])
        out[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack(w2)
    return out


def test_mgm_weights_follow_the_original_layout(zoo: dict) -> None:
    clip_folder = {f"{CLIP_PREFIX}{k}": v for k, v in load_state_dict(zoo["towers"]["clip"]).items()
                   if k.startswith("vision_model.")}
    oc = torch.load(Path(zoo["towers"]["convnext"]) / "open_clip_pytorch_model.bin", weights_only=True)
    conv_folder = {k.replace("visual.trunk.stem.", "model.vision_tower_aux.vision_stem.")
                   .replace("visual.trunk.stages.", "model.vision_tower_aux.vision_stages."): v
                   for k, v in oc.items() if k.startswith(("visual.trunk.stem.", "visual.trunk.stages."))}
    for name, entry in zoo["checkpoints"].items():
        state = load_state_dict(entry["path"])
        assert len(state) == entry["num_tensors"], name
        for prefix in MGM_PREFIXES:
            assert any(k.startswith(prefix) for k in state), (name, prefix)
        llm = load_state_dict(zoo["llms"][entry["family"]])
        llm_part = {k: v for k, v in state.items() if not k.startswith(MGM_PREFIXES)}
        assert llm_part.keys() == llm.keys(), name
        assert all(torch.equal(llm_part[k], llm[k]) for k in llm), name
        assert ("lm_head.weight" in state) == (entry["family"] != "gemma"), name
        clip = {k: v for k, v in state.items() if k.startswith(CLIP_PREFIX) and not k.endswith("position_ids")}
        conv = {k: v for k, v in state.items() if k.startswith("model.vision_tower_aux.")}
        assert clip.keys() == clip_folder.keys() and conv.keys() == conv_folder.keys(), name
        same = entry["towers"] == "same"
        assert all(torch.equal(clip[k], clip_folder[k]) == same for k in clip), name
        assert all(torch.equal(conv[k], conv_folder[k]) == same for k in conv), name
        h = 64
        shapes = {"model.mm_projector.0.weight": (h, 32), "model.mm_projector.0.bias": (h,),
                  "model.mm_projector.2.weight": (h, h), "model.mm_projector.2.bias": (h,),
                  "model.vlm_uni_query_projector.0.weight": (32,), "model.vlm_uni_query_projector.1.weight": (32, 32),
                  "model.vlm_uni_aux_projector.0.bias": (120,), "model.vlm_uni_aux_projector.1.weight": (32, 120),
                  "model.vlm_uni_val_projector.0.weight": (120,), "model.vlm_uni_val_projector.1.bias": (32,)}
        for key, shape in shapes.items():
            assert tuple(state[key].shape) == shape, (name, key)
        assert sum(k.startswith(("model.mm_projector.", "model.vlm_uni_")) for k in state) == 4 + 3 * 4, name
    mixtral = load_state_dict(zoo["checkpoints"]["MGM-Tiny-Mixtral"]["path"])
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in mixtral
    assert "model.layers.0.block_sparse_moe.gate.weight" in mixtral
    bin_state = load_state_dict(zoo["checkpoints"]["MGM-Tiny-Vicuna-Bin"]["path"])
    assert bin_state[f"{CLIP_PREFIX}vision_model.embeddings.position_ids"].tolist() == [list(range(65))]
    # different checkpoints get different MGM modules
    a = load_state_dict(zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"])["model.vlm_uni_val_projector.1.weight"]
    b = load_state_dict(zoo["checkpoints"]["MGM-Tiny-Vicuna-HD"]["path"])["model.vlm_uni_val_projector.1.weight"]
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name,stem,ext", [("MGM-Tiny-Vicuna", "model", "safetensors"),
                                           ("MGM-Tiny-Vicuna-Bin", "pytorch_model", "bin")])
def test_sharded_index_is_consistent(zoo: dict, name: str, stem: str, ext: str) -> None:
    from safetensors import safe_open

    folder = Path(zoo["checkpoints"][name]["path"])
    index = json.loads((folder / f"{stem}.{ext}.index.json").read_text())
    files = sorted(folder.glob(f"{stem}-*.{ext}"))
    assert [f.name for f in files] == [f"{stem}-00001-of-00002.{ext}", f"{stem}-00002-of-00002.{ext}"]
    assert not (folder / f"{stem}.{ext}").exists()
    seen: dict[str, str] = {}
    total = 0
    for f in files:
        if ext == "safetensors":
            with safe_open(str(f), "pt") as handle:
                assert handle.metadata() == {"format": "pt"}
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        else:
            tensors = torch.load(f, weights_only=True)
        assert tensors, f
        for k, v in tensors.items():
            assert k not in seen
            seen[k] = f.name
            total += v.numel() * v.element_size()
    assert index["weight_map"] == seen
    assert index["metadata"]["total_size"] == total


def test_stage1_adapter(zoo: dict) -> None:
    entry = zoo["stage1"]["MGM-Tiny-Vicuna-Pretrain"]
    state = torch.load(entry["mm_projector"], weights_only=True)
    assert {k for k in state if not k.startswith(MGM_PREFIXES)} == set()
    for prefix in MGM_PREFIXES:
        assert any(k.startswith(prefix) for k in state), prefix
    assert "model.vision_tower_aux.vision_stages.3.blocks.0.gamma" in state
    cfg = json.loads((Path(entry["path"]) / "config.json").read_text())
    assert cfg["tune_mm_mlp_adapter"] is True and cfg["image_aspect_ratio"] == "square"
    assert cfg["model_type"] == "mgm" and cfg["mm_hidden_size_aux"] == 120


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("shards", [1, 3])
def test_save_and_load_state_dict_layouts(tmp_path: Path, fmt: str, shards: int) -> None:
    from mgm.zoo.checkpoint import save_state_dict

    state = {f"model.layers.{i}.weight": torch.full((i + 1, 4), float(i)) for i in range(7)}
    state["model.big"] = torch.zeros(64, 64)
    files = save_state_dict(state, tmp_path, fmt=fmt, shards=shards)
    assert len(files) == shards
    stem = "model" if fmt == "safetensors" else "pytorch_model"
    names = [f"{stem}.{fmt}"] if shards == 1 else [f"{stem}-0000{i}-of-00003.{fmt}" for i in (1, 2, 3)]
    assert [f.name for f in files] == names
    assert (tmp_path / f"{stem}.{fmt}.index.json").exists() == (shards > 1)
    loaded = load_state_dict(tmp_path)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="shards"):
        save_state_dict(state, tmp_path / "x", fmt=fmt, shards=len(state) + 1)


def test_checkpoint_tower_variants_and_dtype(zoo: dict, tmp_path: Path) -> None:
    from mgm.zoo.checkpoint import build_mgm_checkpoint

    common = dict(spec=LLM_SPECS["vicuna"], llm_dir=zoo["llms"]["vicuna"], clip_dir=zoo["towers"]["clip"],
                  convnext_dir=zoo["towers"]["convnext"], seed=0)
    full = load_state_dict(zoo["checkpoints"]["MGM-Tiny-Vicuna-Relative"]["path"])
    none = build_mgm_checkpoint(tmp_path / "MGM-none", name="none", towers="none", **common)
    state = load_state_dict(none["path"])
    assert not any(k.startswith(("model.vision_tower.", "model.vision_tower_aux.")) for k in state)
    partial = load_state_dict(build_mgm_checkpoint(tmp_path / "MGM-partial", name="partial", towers="partial",
                                                   **common)["path"])
    dropped = {k for k in full if k.startswith(CLIP_PREFIX)} - set(partial)
    assert dropped and all(".encoder.layers.2." in k or ".post_layernorm." in k for k in dropped)
    assert {k for k in full if k.startswith("model.vision_tower_aux.")} <= set(partial)
    bf16 = build_mgm_checkpoint(tmp_path / "MGM-bf16", name="bf16", dtype="bfloat16", **common)
    assert json.loads((Path(bf16["path"]) / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert {v.dtype for v in load_state_dict(bf16["path"]).values()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="towers"):
        build_mgm_checkpoint(tmp_path / "MGM-bad", name="bad", towers="some", **common)
