"""Inference core on tiny checkpoints written in the original layout: loading, layout round trip,
which tower weights are used, encode_images (base and HD) against the spec's formulas, splicing,
batched generation, and the user-facing errors."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from mgm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mgm.errors import UserError
from mgm.model.builder import load_pretrained_model
from mgm.model.checkpoint_files import CheckpointFiles
from mgm.zoo.checkpoint import load_state_dict as read_checkpoint

FULL = ["MGM-Tiny-Vicuna", "MGM-Tiny-Vicuna-HD", "MGM-Tiny-Vicuna-Bin", "MGM-Tiny-LLaMA3", "MGM-Tiny-Gemma",
        "MGM-Tiny-Gemma-HD", "MGM-Tiny-Mistral", "MGM-Tiny-Mixtral", "MGM-Tiny-Yi"]


@pytest.mark.parametrize("name", FULL)
def test_checkpoint_loads_without_missing_or_unexpected_keys(tiny_zoo, name):
    from transformers import AutoModelForCausalLM

    import mgm.model  # noqa: F401  (registers the Auto classes)

    path = tiny_zoo["checkpoints"][name]["path"]
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"], info["missing_keys"]
    unexpected = [k for k in info["unexpected_keys"] if not k.endswith("position_ids")]
    assert not unexpected
    assert type(model).__name__ == json.load(open(f"{path}/config.json"))["architectures"][0]


@pytest.mark.parametrize("name", ["MGM-Tiny-Vicuna", "MGM-Tiny-Gemma-HD", "MGM-Tiny-Mixtral"])
def test_save_pretrained_round_trips_in_original_layout(tiny_zoo, loaded_models, tmp_path, name):
    tok, model, _, _ = loaded_models(name)
    model.save_pretrained(tmp_path / "out")
    tok.save_pretrained(tmp_path / "out")
    original = {k: v for k, v in read_checkpoint(tiny_zoo["checkpoints"][name]["path"]).items()
                if not k.endswith("position_ids")}
    saved = read_checkpoint(tmp_path / "out")
    assert set(saved) == set(original)
    for key, value in original.items():
        assert torch.equal(saved[key], value), key
    # and it reloads to the same weights
    _, again, _, _ = load_pretrained_model(str(tmp_path / "out"), None, None, device="cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_tower_weight_choice_follows_the_original(tiny_zoo, loaded_models):
    """Perturbed checkpoint: CLIP from the checkpoint (complete in the mining shard), ConvNeXt from the folder."""
    name = "MGM-Tiny-Vicuna-Perturbed"
    _, model, _, _ = loaded_models(name)
    assert model.tower_weight_sources == {"vision_tower": "checkpoint", "vision_tower_aux": "folder"}
    ckpt = read_checkpoint(tiny_zoo["checkpoints"][name]["path"])
    clip_key = "vision_tower.vision_model.embeddings.patch_embedding.weight"
    assert torch.equal(model.get_model().vision_tower.state_dict()[clip_key],
                       ckpt["model.vision_tower." + clip_key])
    raw = torch.load(f"{tiny_zoo['towers']['convnext']}/open_clip_pytorch_model.bin", weights_only=True)
    ours = model.get_model().vision_tower_aux.state_dict()["vision_stem.0.weight"]
    assert torch.equal(ours, raw["visual.trunk.stem.0.weight"])
    assert not torch.equal(ours, ckpt["model.vision_tower_aux.vision_stem.0.weight"])


def test_clip_from_folder_when_mining_shard_lacks_clip(tiny_zoo, tmp_path):
    """If the shards holding vlm_uni keys do not hold the whole CLIP, the folder's CLIP is used."""
    from safetensors.torch import save_file

    src = tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna-Perturbed"]["path"]
    state = read_checkpoint(src)
    dst = tmp_path / "split"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    # shard 1: CLIP only; shard 2: everything else (incl. vlm_uni)
    clip = {k: v for k, v in state.items() if k.startswith("model.vision_tower.vision_tower.")}
    rest = {k: v for k, v in state.items() if k not in clip}
    save_file(clip, str(dst / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(rest, str(dst / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {**{k: "model-00001-of-00002.safetensors" for k in clip},
                                            **{k: "model-00002-of-00002.safetensors" for k in rest}}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    _, model, _, _ = load_pretrained_model(str(dst), None, None, device="cpu")
    assert model.tower_weight_sources["vision_tower"] == "folder"
    folder = CheckpointFiles(tiny_zoo["towers"]["clip"])
    key = [k for k in folder.keys() if k.endswith("patch_embedding.weight") and "vision" in k][0]
    got = model.get_model().vision_tower.state_dict()["vision_tower.vision_model.embeddings.patch_embedding.weight"]
    assert torch.equal(got, folder.load([key])[key])


# -- reference encode_images written from docs/original.md#patch-info-mining -----------------------------------------------
def ref_mining(x, hr, inner):
    n, l, d = x.shape
    p = int(math.sqrt(l))
    c, hs, ws = hr.shape[1:]
    ps = ws // p
    a = hr.permute(0, 2, 3, 1).reshape(n, p, ps, p, ps, c).permute(0, 1, 3, 2, 4, 5).reshape(n, p * p, ps * ps, c)
    q = inner.vlm_uni_query_projector(x)
    k = inner.vlm_uni_aux_projector(a)
    v = inner.vlm_uni_val_projector(a)
    att = torch.nan_to_num(q[:, :, None] @ (k / d ** 0.5).transpose(-1, -2)).softmax(-1)
    return (att @ v).mean(2)


def ref_clip(inner, images):
    vm = inner.vision_tower.vision_tower.vision_model
    emb = vm.embeddings
    x = emb.patch_embedding(images).flatten(2).transpose(1, 2)
    x = torch.cat([emb.class_embedding.expand(x.shape[0], 1, -1), x], 1) + emb.position_embedding.weight
    hidden = [vm.pre_layrnorm(x)]
    for layer in vm.encoder.layers:
        hidden.append(layer(hidden[-1], None))
    return hidden[-2][:, 1:]


def ref_encode(model, images, images_aux):
    inner = model.get_model()
    s = model.mgm_settings
    if s.image_grid == 1:
        f = ref_clip(inner, images)
        return inner.mm_projector(f + ref_mining(f, inner.vision_tower_aux(images_aux), inner))
    g, b = s.image_grid, images.shape[0]
    glob = ref_clip(inner, images[:, -1])
    crops = ref_clip(inner, images[:, :-1].flatten(0, 1))
    hr = inner.vision_tower_aux(images_aux)
    c, hs, ws = hr.shape[1:]
    hr_glob = F.interpolate(hr, scale_factor=1 / g, mode="bilinear", align_corners=False)
    hr_crops = hr.view(b, c, g, hs // g, g, ws // g).permute(0, 2, 4, 1, 3, 5).reshape(b * g * g, c, hs // g, ws // g)
    crops = (crops + ref_mining(crops, hr_crops, inner)).reshape(b, -1, crops.shape[-1])
    glob = glob + ref_mining(glob, hr_glob, inner)
    return inner.mm_projector(torch.cat([glob, crops], 1))


@pytest.mark.parametrize("name", ["MGM-Tiny-Vicuna", "MGM-Tiny-Vicuna-HD", "MGM-Tiny-Gemma-HD"])
def test_encode_images_matches_spec_reference(loaded_models, name):
    _, model, _, _ = loaded_models(name)
    s = model.mgm_settings
    torch.manual_seed(0)
    b = 2
    side = model.get_vision_tower().config.image_size
    shape = (b, s.num_views, 3, side, side) if s.image_grid > 1 else (b, 3, side, side)
    images, aux = torch.randn(shape), torch.randn(b, 3, s.image_size_aux, s.image_size_aux)
    with torch.no_grad():
        ours, ref = model.encode_images(images, aux), ref_encode(model, images, aux)
    tokens = model.get_vision_tower().num_patches * (5 if s.image_grid > 1 else 1)
    assert ours.shape == (b, tokens, model.config.hidden_size)
    assert ((ours - ref).norm() / ref.norm()) < 1e-5


def test_splice_labels_and_gemma_scaling(loaded_models):
    _, model, _, _ = loaded_models("MGM-Tiny-Gemma")
    torch.manual_seed(0)
    images, aux = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 64, 64)
    ids = torch.tensor([[2, 10, IMAGE_TOKEN_INDEX, 11, 12]])
    labels = torch.tensor([[IGNORE_INDEX, 10, IMAGE_TOKEN_INDEX, 11, 12]])
    with torch.no_grad():
        _, _, _, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
            ids, None, None, None, labels, images, aux)
        feats = model.encode_images(images, aux)[0]
        text = model.get_model().embed_tokens(torch.tensor([2, 10, 11, 12]))
    n = feats.shape[0]
    assert embeds.shape == (1, 4 + n, model.config.hidden_size)
    scale = model.config.hidden_size ** 0.5  # every input row is scaled, image rows included (docs/original.md#forward-and-generate)
    assert torch.allclose(embeds[0, 2:2 + n], feats * scale, atol=1e-6)
    assert torch.allclose(embeds[0, :2], text[:2]) and torch.allclose(embeds[0, 2 + n:], text[2:])
    assert new_labels[0, 2:2 + n].eq(IGNORE_INDEX).all() and new_labels[0, -2:].tolist() == [11, 12]


def test_text_only_logits_equal_the_plain_llm(tiny_zoo, loaded_models):
    from transformers import AutoModelForCausalLM

    _, model, _, _ = loaded_models("MGM-Tiny-Vicuna")
    plain = AutoModelForCausalLM.from_pretrained(tiny_zoo["llms"]["vicuna"], dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5)


def test_gemma_uses_exact_gelu_for_released_configs(loaded_models):
    _, model, _, _ = loaded_models("MGM-Tiny-Gemma")
    assert model.config.hidden_act == "gelu"
    act = model.get_model().layers[0].mlp.act_fn
    x = torch.tensor([1.5])
    assert torch.allclose(act(x), F.gelu(x))  # erf form, not tanh


@pytest.mark.parametrize("name", ["MGM-Tiny-Vicuna", "MGM-Tiny-LLaMA3", "MGM-Tiny-Gemma-HD", "MGM-Tiny-Mixtral"])
def test_batched_generation_equals_one_by_one(loaded_models, name):
    from PIL import Image

    from mgm.conversation import conv_templates, template_for_model_config
    from mgm.serve.engine import GenerationParams, InferenceEngine, Request

    tok, model, proc, ctx = loaded_models(name)
    engine = InferenceEngine(tok, model, proc, ctx)
    conv_mode = template_for_model_config(model.config, tok)

    def prompt(text):
        conv = conv_templates[conv_mode].copy()
        conv.append_message(conv.roles[0], text)
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    red, blue = Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (20, 50), (20, 40, 220))
    params = GenerationParams(temperature=0, max_new_tokens=8)
    requests = [
        Request(prompt("<image>\nWhat colour is this?"), [red], params),
        Request(prompt("Tell me a story about a cat."), [], params),
        Request(prompt("<image>\n<image>\nCompare the two images please"), [blue, red], params)
        if model.mgm_settings.image_grid == 1 else Request(prompt("<image>\nCompare please"), [red], params),
        Request(prompt("<image>\nshape"), [blue], params),
    ]
    batched = engine.generate_ids(requests)
    for i, req in enumerate(requests):
        single = engine.generate_ids([req])[0]
        row = batched[i][: single.shape[0]]
        assert row.tolist() == single.tolist(), (i, row, single)


def test_tokenizer_image_token(loaded_models):
    from mgm.mm_utils import tokenizer_image_token

    tok, *_ = loaded_models("MGM-Tiny-Vicuna")
    prompt = "USER: <image>\nhello <image> world"
    ids = tokenizer_image_token(prompt, tok)
    chunks = [tok(c).input_ids for c in prompt.split("<image>")]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids == [tok.bos_token_id] + chunks[0][1:] + [IMAGE_TOKEN_INDEX] + chunks[1][1:] + [IMAGE_TOKEN_INDEX] + chunks[2][1:]
    assert tokenizer_image_token(prompt, tok, return_tensors="pt").tolist() == ids
    with pytest.raises(ValueError):
        tokenizer_image_token(prompt, tok, return_tensors="np")


# -- bad input ---------------------------------------------------------------------------------------------
def _copy_ckpt(tiny_zoo, tmp_path, name="MGM-Tiny-Vicuna-HD"):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_zoo["checkpoints"][name]["path"], dst)
    return dst


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        load_pretrained_model(str(tmp_path), None, None, device="cpu")


def test_unknown_model_type(tiny_zoo, tmp_path):
    folder = _copy_ckpt(tiny_zoo, tmp_path)
    _edit_config(folder, model_type="llava_qwen")
    with pytest.raises(UserError, match="llava_qwen.*mgm"):
        load_pretrained_model(str(folder), None, None, device="cpu")


def test_tower_path_that_resolves_nowhere(tiny_zoo, tmp_path):
    folder = _copy_ckpt(tiny_zoo, tmp_path)
    _edit_config(folder, mm_vision_tower="model_zoo/OpenAI/does-not-exist")
    with pytest.raises(UserError, match=r"does-not-exist[\s\S]*Looked in"):
        load_pretrained_model(str(folder), None, None, device="cpu")


def test_relative_tower_paths_resolve_from_the_working_directory(tiny_zoo, tmp_path, monkeypatch):
    root = tmp_path / "repo"
    (root / "model_zoo").mkdir(parents=True)
    shutil.copytree(tiny_zoo["root"] + "/OpenAI", root / "model_zoo" / "OpenAI")
    monkeypatch.chdir(root)
    _, model, _, _ = load_pretrained_model(tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna-Relative"]["path"], None, None,
                                           device="cpu")
    assert str(model.get_model().tower_dirs["vision_tower"]).startswith(str(root))


@pytest.mark.parametrize("changes,match", [
    ({"image_global": True, "image_grid": 1}, "image_global"),
    ({"mm_projector_type": "mlp2x_relu"}, "mm_projector_type"),
    ({"mm_vision_select_feature": "cls_patch"}, "cls_patch"),
])
def test_impossible_config_combinations(tiny_zoo, tmp_path, changes, match):
    folder = _copy_ckpt(tiny_zoo, tmp_path)
    _edit_config(folder, **changes)
    with pytest.raises(UserError, match=match):
        load_pretrained_model(str(folder), None, None, device="cpu")


def test_prompt_longer_than_context(loaded_models):
    from mgm.serve.engine import GenerationParams, InferenceEngine, Request

    tok, model, proc, ctx = loaded_models("MGM-Tiny-Vicuna")
    engine = InferenceEngine(tok, model, proc, ctx)
    with pytest.raises(UserError, match="context"):
        engine.generate([Request("word " * 2000, [], GenerationParams(temperature=0, max_new_tokens=2))])


def test_clip_features_equal_hf_clip_hidden_states(tiny_zoo, loaded_models):
    """Our CLIP path (layer -2, CLS dropped) equals HF CLIPVisionModel's own hidden_states[-2][:, 1:]."""
    from transformers import CLIPVisionModel

    _, model, _, _ = loaded_models("MGM-Tiny-Vicuna-HD")
    hf = CLIPVisionModel.from_pretrained(tiny_zoo["towers"]["clip"], dtype=torch.float32).eval()
    # the HD checkpoint embeds the folder's CLIP weights unchanged
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = hf(images, output_hidden_states=True).hidden_states[-2][:, 1:]
        ours = model.get_vision_tower()(images)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_real_convnext_large_d_320_folder_matches_open_clip(tmp_path):
    """A real-architecture OpenCLIP ConvNeXt-L folder (random weights) loads by key and matches open_clip."""
    open_clip = pytest.importorskip("open_clip")
    from mgm.model.vision.convnext import ConvNeXtTower, strip_open_clip_state_dict
    from mgm.model.vision.registry import convnext_spec_from, load_open_clip_weights

    torch.manual_seed(0)
    clip = open_clip.create_model("convnext_large_d_320", pretrained=None).eval()
    folder = tmp_path / "openclip-convnext-large-d-320-laion2B-s29B-b131K-ft-soup"
    folder.mkdir()
    torch.save(clip.state_dict(), folder / "open_clip_pytorch_model.bin")
    cfg = {"model_cfg": open_clip.get_model_config("convnext_large_d_320"),
           "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    spec = convnext_spec_from(folder)
    assert spec.dims == (192, 384, 768, 1536) and spec.depths == (3, 3, 27, 3) and spec.hidden_size == 2880
    tower = ConvNeXtTower(spec).eval()
    tower.load_state_dict(strip_open_clip_state_dict(load_open_clip_weights(folder)), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        trunk = clip.visual.trunk
        h = trunk.stem(x)
        outs = []
        for stage in trunk.stages:
            h = stage(h)
            outs.append(h)
        ref = torch.cat([outs[0]] + [F.interpolate(o, size=outs[0].shape[-2:], mode="bilinear", align_corners=False)
                                     for o in outs[1:]], 1)
        ours = tower(x)
    assert ours.shape == (1, 2880, 16, 16)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_4bit_quantises_the_llm_only(tiny_zoo):
    pytest.importorskip("bitsandbytes")
    import warnings

    from mgm.serve.engine import GenerationParams, InferenceEngine, Request

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok, model, proc, ctx = load_pretrained_model(tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"], None, None,
                                                      load_4bit=True, device="cpu")
        inner = model.get_model()
        assert type(inner.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
        for module in (inner.mm_projector[0], inner.vlm_uni_aux_projector[1],
                       inner.vision_tower.vision_tower.vision_model.encoder.layers[0].mlp.fc1):
            assert type(module) is torch.nn.Linear
        from PIL import Image

        out = InferenceEngine(tok, model, proc, ctx).generate(
            [Request("USER: <image>\nhi ASSISTANT:", [Image.new("RGB", (30, 30))], GenerationParams(0, max_new_tokens=3))])
    assert isinstance(out[0], str)
