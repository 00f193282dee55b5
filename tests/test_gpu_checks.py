"""Checks only a CUDA machine can make (marker `gpu`; skipped without CUDA; run by scripts/device_check.sh).

- dtype goldens: the same checkpoint, prompt and image in float32 on the CPU (the golden) and in float32,
  float16 and bfloat16 on the GPU; the prefill logits must agree within each dtype's tolerance, and the
  float32 GPU run must give the golden greedy tokens;
- flash-attention: with flash-attn installed, `use_flash_attn=True` selects `flash_attention_2` and
  answers as SDPA does; without it, the same call falls back to SDPA with a warning.
"""
from __future__ import annotations

import warnings

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# relative L2 error of the prefill logits against the CPU float32 golden
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from mgm.zoo.tiny import build_tiny_zoo

    zoo = build_tiny_zoo(tmp_path_factory.mktemp("gpu_zoo"), seed=0, families=["vicuna"])
    return zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]


def _inputs(model, tokenizer):
    from mgm.mm_utils import tokenizer_image_token

    gen = torch.Generator().manual_seed(0)
    side = model.get_vision_tower().config.image_size
    aux_side = model.mgm_settings.image_size_aux
    images = torch.randn(1, 3, side, side, generator=gen)
    aux = torch.randn(1, 3, aux_side, aux_side, generator=gen)
    ids = tokenizer_image_token("USER: <image>\nWhat is in the picture? ASSISTANT:", tokenizer,
                                return_tensors="pt").unsqueeze(0)
    return ids, images, aux


def _run(path: str, device: str, dtype: torch.dtype, **load_kwargs):
    """(prefill logits of the last position as float32 on the CPU, greedy new tokens)."""
    from mgm.model.builder import load_pretrained_model

    tokenizer, model, _, _ = load_pretrained_model(path, None, "MGM-Tiny-Vicuna", device=device, dtype=dtype,
                                                   **load_kwargs)
    ids, images, aux = _inputs(model, tokenizer)
    ids, images, aux = ids.to(device), images.to(device, dtype), aux.to(device, dtype)
    with torch.no_grad():
        logits = model(ids, images=images, images_aux=aux).logits[0, -1].float().cpu()
        tokens = model.generate(ids, images=images, images_aux=aux, do_sample=False, max_new_tokens=NEW_TOKENS,
                                pad_token_id=tokenizer.pad_token_id)[0].tolist()
    return logits, tokens, model


@pytest.fixture(scope="module")
def golden(checkpoint):
    logits, tokens, _ = _run(checkpoint, "cpu", torch.float32)
    return logits, tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_dtype_matches_the_cpu_float32_golden(checkpoint, golden, dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 must mean float32 for the golden comparison
    torch.backends.cudnn.allow_tf32 = False
    ref_logits, ref_tokens = golden
    logits, tokens, _ = _run(checkpoint, "cuda", dtype)
    rel = float((logits - ref_logits).norm() / ref_logits.norm())
    print(f"{dtype}: prefill logits relative error {rel:.2e}, greedy tokens equal {tokens == ref_tokens}")
    assert torch.isfinite(logits).all()
    assert rel <= TOLERANCE[dtype], f"{dtype}: relative error {rel:.2e} > {TOLERANCE[dtype]:.0e}"
    if dtype == torch.float32:
        assert tokens == ref_tokens


def test_flash_attention_is_selected_or_falls_back(checkpoint):
    try:
        import flash_attn  # noqa: F401
        have_flash = True
    except ImportError:
        have_flash = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logits, tokens, model = _run(checkpoint, "cuda", torch.float16, use_flash_attn=True)
    chosen = model.config._attn_implementation
    if not have_flash:
        assert chosen == "sdpa"
        assert any("flash-attn is not installed" in str(w.message) for w in caught)
        return
    assert chosen == "flash_attention_2"
    sdpa_logits, sdpa_tokens, _ = _run(checkpoint, "cuda", torch.float16)
    rel = float((logits - sdpa_logits).norm() / sdpa_logits.norm())
    print(f"flash_attention_2 vs sdpa (float16): relative error {rel:.2e}")
    assert rel <= 1e-2
