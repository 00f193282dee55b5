"""The CPU kernel choice: probed per dtype and row class, a fallback that answers the same, bf16 on AVX2.

An AVX2-only CPU is emulated on any x86 machine by limiting oneDNN, ATen and MKL to AVX2
(`ONEDNN_MAX_CPU_ISA`, `ATEN_CPU_CAPABILITY`, `MKL_ENABLE_INSTRUCTIONS`): oneDNN then has no bf16/fp16
inner product, exactly as on such a CPU, which is what crashed bf16 loading before the probe.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mgm.model import cpu_probe, fast_linear
from mgm.model.vision import convnext

AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def _raise(*_args, **_kwargs):
    raise RuntimeError("could not create a primitive descriptor for the inner product forward propagation primitive")


@pytest.fixture
def fresh_plans(monkeypatch, tmp_path):
    """Probe anew inside the test (own cache file) and forget the test's choices afterwards."""
    monkeypatch.setenv("MGM_CACHE_DIR", str(tmp_path))
    for fn in (cpu_probe.probe_result, fast_linear._plan_functions, convnext.fused_blocks_work):
        fn.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    for fn in (cpu_probe.probe_result, fast_linear._plan_functions, convnext.fused_blocks_work):
        fn.cache_clear()


def test_row_classes_and_cpu_description():
    assert [cpu_probe.ROW_CLASSES[cpu_probe.row_class(n)] for n in (1, 2, 31, 32, 4096)] == [
        "one", "few", "few", "many", "many"]
    info = cpu_probe.cpu_info()
    assert info["torch_capability"] in cpu_probe.describe() and info["model"] in cpu_probe.describe()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probe_never_chooses_a_failing_kernel(dtype, fresh_plans, monkeypatch):
    monkeypatch.setitem(fast_linear.KERNELS, "onednn", _raise)
    result = cpu_probe.probe(dtype)
    assert "onednn" not in result["correct"] and "stock" in result["correct"]
    assert set(result["plan"]) == set(cpu_probe.ROW_CLASSES)
    assert "onednn" not in result["plan"].values()
    for name, kernel in result["plan"].items():  # a non-stock choice must be timed faster than stock
        if kernel != "stock":
            assert result["ms"][name][kernel] <= cpu_probe.MARGIN * result["ms"][name]["stock"]


def test_probe_rejects_a_wrong_kernel(fresh_plans, monkeypatch):
    monkeypatch.setitem(fast_linear.KERNELS, "onednn", lambda x, w, b, gelu: F.linear(x, w, b) * 1.01)
    assert "onednn" not in cpu_probe.probe(torch.float32)["correct"]


def test_plan_is_cached_on_disk_and_env_forces_stock(fresh_plans, monkeypatch):
    plan = cpu_probe.linear_plan(torch.float32)
    stored = json.loads((fresh_plans / "cpu_kernels.json").read_text())
    assert [entry["plan"] for entry in stored.values()] == [plan]
    cpu_probe.probe_result.cache_clear()
    monkeypatch.setattr(cpu_probe, "probe", _raise)  # a second process reads the file, never probes
    assert cpu_probe.linear_plan(torch.float32) == plan
    cpu_probe.probe_result.cache_clear()
    monkeypatch.setenv("MGM_CPU_KERNELS", "stock")
    assert set(cpu_probe.linear_plan(torch.bfloat16).values()) == {"stock"}
    cpu_probe.probe_result.cache_clear()
    monkeypatch.setenv("MGM_CPU_KERNELS", "fastest")
    with pytest.raises(ValueError, match="MGM_CPU_KERNELS='fastest'.*'auto'.*'stock'"):
        cpu_probe.linear_plan(torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_kernel_the_plan_can_choose_equals_f_linear(dtype):
    torch.manual_seed(5)
    w, b = torch.randn(40, 24).to(dtype), torch.randn(40).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for name in cpu_probe.probe_result(dtype)["correct"]:
        for rows in (1, 3, 64):
            x = torch.randn(rows, 24).to(dtype)
            ref = F.linear(x.float(), w.float(), b.float())
            for gelu in (False, True):
                y = fast_linear.KERNELS[name](x, w, b, gelu)
                assert y.dtype == dtype
                assert torch.allclose(y.float(), F.gelu(ref) if gelu else ref, rtol=tol, atol=tol * 10), (name, rows)


def test_fast_linear_module_is_opt_in_and_keeps_state_dict():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    keys, ref = list(model.state_dict()), model(torch.ones(1, 4))
    assert fast_linear.use_fast_linears(model) == 2 and fast_linear.use_fast_linears(model) == 0
    assert type(model[0]) is fast_linear.FastLinear and isinstance(model[0], torch.nn.Linear)
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.allclose(model(torch.ones(1, 4)), ref, atol=1e-6)
    model(torch.ones(1, 4)).sum().backward()  # autograd through the stock path
    assert model[0].weight.grad is not None
    assert fast_linear.use_stock_linears(model) == 2 and type(model[2]) is torch.nn.Linear


def test_engine_leaves_the_callers_model_unchanged(tiny_zoo):
    from mgm.inference import InferenceEngine
    from mgm.model.builder import load_pretrained_model

    path = tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]
    tok, model, proc, ctx = load_pretrained_model(path, None, "MGM-Tiny-Vicuna", device="cpu", fast_linears=False)
    before = [(type(m), dict(m.__dict__)) for m in model.modules()]
    InferenceEngine(tok, model, proc, ctx)
    after = [(type(m), dict(m.__dict__)) for m in model.modules()]
    assert [t for t, _ in before] == [t for t, _ in after]
    assert all(set(a) == set(b) for (_, a), (_, b) in zip(before, after))
    assert not any(type(m) is fast_linear.FastLinear for m in model.modules())
    _, loaded, _, _ = load_pretrained_model(path, None, "MGM-Tiny-Vicuna", device="cpu")
    assert any(type(m) is fast_linear.FastLinear for m in loaded.model.layers.modules())


def _greedy(path: str, dtype=torch.float32) -> tuple[list[int], torch.Tensor]:
    from PIL import Image

    from mgm.conversation import conv_templates
    from mgm.inference import GenerationParams, InferenceEngine, Request
    from mgm.model.builder import load_pretrained_model

    tok, model, proc, ctx = load_pretrained_model(path, None, "x", device="cpu", dtype=dtype)
    engine = InferenceEngine(tok, model, proc, ctx)
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat is in the picture?")
    conv.append_message(conv.roles[1], None)
    image = Image.new("RGB", (40, 30), (200, 30, 90))
    request = Request(conv.get_prompt(), [image], GenerationParams(temperature=0.0, max_new_tokens=12))
    lr, hr = engine.image_tensors([image])
    with torch.no_grad():
        features = model.encode_images(lr, hr)
    return engine.generate_ids([request])[0].tolist(), features


def test_forced_fallbacks_answer_with_the_same_tokens(tiny_zoo, fresh_plans, monkeypatch):
    path = tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]
    tokens, features = _greedy(path)
    # every probe fails: no fast linear kernel is correct, the fused ConvNeXt block raises
    for name in ("onednn", "upcast"):
        monkeypatch.setitem(fast_linear.KERNELS, name, _raise)
    monkeypatch.setattr(convnext, "_fused_block", _raise)
    for fn in (cpu_probe.probe_result, fast_linear._plan_functions, convnext.fused_blocks_work):
        fn.cache_clear()
    monkeypatch.setenv("MGM_CACHE_DIR", str(fresh_plans / "failed"))
    assert set(cpu_probe.linear_plan(torch.float32).values()) == {"stock"}
    assert not convnext.fused_blocks_work("cpu", torch.float32)
    fallback_tokens, fallback_features = _greedy(path)
    assert fallback_tokens == tokens and len(tokens) > 0
    assert torch.allclose(fallback_features, features, rtol=1e-4, atol=1e-5)


AVX2_SCRIPT = """
import json, sys, torch
from PIL import Image
from transformers import pipeline
from mgm.model import cpu_probe
from mgm.model.builder import load_pretrained_model

path = sys.argv[1]
tok, model, proc, ctx = load_pretrained_model(path, None, "x", device="cpu", dtype=torch.bfloat16)
from mgm.inference import GenerationParams, InferenceEngine, Request
engine = InferenceEngine(tok, model, proc, ctx)
image = Image.new("RGB", (40, 30), (200, 30, 90))
req = Request("USER: <image>\\nWhat is it? ASSISTANT:", [image], GenerationParams(temperature=0.0, max_new_tokens=6))
ids = engine.generate_ids([req])[0].tolist()
pipe = pipeline("image-text-to-text", model=path, dtype=torch.bfloat16)
msgs = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]}]
out = pipe(text=msgs, max_new_tokens=4, generate_kwargs={"do_sample": False})
print(json.dumps({"ids": ids, "onednn_bf16": cpu_probe.cpu_info()["onednn_bf16"],
                  "plan": cpu_probe.linear_plan(torch.bfloat16), "pipeline": out[0]["generated_text"][-1]["role"]}))
"""


def test_bf16_inference_and_pipeline_on_an_emulated_avx2_cpu(tiny_zoo, tmp_path):
    if cpu_probe.cpu_info()["model"] and "avx2" not in cpu_probe.cpu_info()["flags"]:
        pytest.skip("not an x86 CPU with AVX2: the AVX2 emulation does not apply")
    env = {**os.environ, **AVX2_ENV, "MGM_CACHE_DIR": str(tmp_path)}
    path = tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]
    done = subprocess.run([sys.executable, "-c", AVX2_SCRIPT, path], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["onednn_bf16"] is False  # the emulation took: oneDNN has no bf16 inner product here
    assert "onednn" not in result["plan"].values() and result["ids"] and result["pipeline"] == "assistant"
