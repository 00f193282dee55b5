"""Weight-only int8 / int4 LLM linears (`mgm.model.quantize`) and `load_pretrained_model(quantization=...)`."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mgm.errors import UserError
from mgm.model.quantize import Int4Linear, Int8Linear, dequantized_weight, int4_group, quantize_llm


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


@pytest.mark.parametrize("cls, bound", [(Int8Linear, 0.02), (Int4Linear, 0.15)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantised_linear_computes_with_its_dequantised_weight(cls, bound, dtype):
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 64).to(dtype)
    q = cls(layer)
    x = torch.randn(2, 5, 256).to(dtype)
    with torch.no_grad():
        y = q(x)
        exact = F.linear(x.float(), dequantized_weight(q), layer.bias.float())
        full = layer(x)
    assert y.shape == (2, 5, 64) and y.dtype == dtype
    assert rel(y, exact) < (1e-5 if dtype == torch.float32 else 2e-2)  # the kernel computes what it stores
    assert rel(dequantized_weight(q), layer.weight) < bound  # and that is close to the original weight
    assert rel(y, full) < bound + (0 if dtype == torch.float32 else 2e-2)
    assert sum(b.numel() * b.element_size() for b in q.buffers()) < 0.3 * layer.weight.numel() * 4


def test_int4_groups_follow_the_shape():
    assert int4_group(4096, 4096) == 128 and int4_group(64, 128) == 64 and int4_group(96, 32) == 32
    assert int4_group(64, 40) is None  # the packing needs out_features divisible by 16
    with pytest.raises(ValueError, match="out_features by 16"):
        Int4Linear(torch.nn.Linear(64, 40))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_loader_quantises_the_llm_only_and_answers(scheme, tiny_zoo, loaded_models):
    from mgm.inference import GenerationParams, InferenceEngine, Request
    from mgm.model.builder import load_pretrained_model

    name = "MGM-Tiny-Vicuna"
    tok, model, proc, ctx = load_pretrained_model(tiny_zoo["checkpoints"][name]["path"], None, name, device="cpu",
                                                  quantization=scheme)
    inner = model.get_model()
    kinds = {type(m) for m in inner.layers.modules()} & {Int8Linear, Int4Linear, torch.nn.Linear}
    assert torch.nn.Linear not in kinds and (Int4Linear in kinds if scheme == "int4" else kinds == {Int8Linear})
    assert not any(type(m) in (Int8Linear, Int4Linear) for part in (inner.mm_projector, inner.vision_tower,
                                                                     inner.vision_tower_aux, inner.vlm_uni_val_projector)
                   for m in part.modules())
    assert isinstance(model.lm_head, Int8Linear)
    _, ref_model, _, _ = loaded_models(name)
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        err = rel(model(input_ids=ids).logits, ref_model(input_ids=ids).logits)
    assert err < (0.05 if scheme == "int8" else 0.3), err
    request = Request("USER: <image>\nWhat is it? ASSISTANT:", [Image.new("RGB", (32, 24), (10, 200, 40))],
                      GenerationParams(temperature=0.0, max_new_tokens=5))
    assert InferenceEngine(tok, model, proc, ctx).generate_ids([request])[0].numel() > 0


def test_bad_quantization_requests_are_refused(tiny_zoo):
    from mgm.model.builder import load_pretrained_model

    path = tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]
    with pytest.raises(UserError, match="int3.*int8, int4"):
        load_pretrained_model(path, None, "x", device="cpu", quantization="int3")
    with pytest.raises(UserError, match="exclude each other"):
        load_pretrained_model(path, None, "x", device="cpu", quantization="int8", load_4bit=True)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    assert quantize_llm(model, "int8", skip=("0",)) == 0 and type(model[0]) is torch.nn.Linear


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_cli_and_worker_take_the_quantization_flag(scheme, tiny_zoo, tmp_path, monkeypatch, capsys):
    import io
    import sys

    from mgm.serve import cli
    from mgm.serve.worker_settings import build_parser, settings_from_args

    image = tmp_path / "red.png"
    Image.new("RGB", (48, 36), (220, 20, 20)).save(image)
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is in the image?\n"))
    rc = cli.main(["--model-path", tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"], "--image-file", str(image),
                   "--device", "cpu", "--temperature", "0", "--max-new-tokens", "4", "--quantization", scheme,
                   "--debug"])
    assert rc == 0 and capsys.readouterr().out.count("'outputs':") == 1
    settings = settings_from_args(build_parser().parse_args(["--model-path", "x", "--quantization", scheme]))
    assert settings.quantization == scheme


def test_a_missing_kernel_is_one_clear_error(tiny_zoo, monkeypatch):
    from mgm.model.builder import load_pretrained_model

    def missing(*_args, **_kwargs):
        raise RuntimeError("Could not run 'aten::_convert_weight_to_int4pack_for_cpu' with arguments")

    monkeypatch.setattr(torch, "_convert_weight_to_int4pack_for_cpu", missing)
    with pytest.raises(UserError, match="--quantization int4: int4 weight-only kernels are not available"):
        load_pretrained_model(tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"], None, "x", device="cpu",
                              quantization="int4")
