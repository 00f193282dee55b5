"""Code written against the original package imports and runs: `mgm.utils`, lazy `mgm` exports, Auto
registration on a bare `import mgm`, images in any floating dtype."""
from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading

import pytest
import torch


def test_import_mgm_registers_lazily_and_exports_the_classes(tiny_zoo):
    """Fresh interpreters: light modules stay torch-free; Auto classes work after a bare `import mgm`,
    whichever of mgm / transformers is imported first."""
    ckpt = tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]
    script = textwrap.dedent(f"""
        import sys
        import mgm.conversation, mgm.constants, mgm.utils
        assert "torch" not in sys.modules, "a light mgm import pulled in torch"
        import mgm
        from transformers import AutoConfig, AutoModelForCausalLM
        config = AutoConfig.from_pretrained({ckpt!r})
        from mgm import MGMLlamaForCausalLM, MiniGeminiLlamaForCausalLM, MGMGemmaForCausalLM
        assert type(config).__name__ == "MGMConfig" and config.model_type == "mgm"
        model = AutoModelForCausalLM.from_pretrained({ckpt!r})
        assert type(model) is MGMLlamaForCausalLM
        print("ok-1")
    """)
    first_transformers = textwrap.dedent(f"""
        from transformers import AutoModelForCausalLM, AutoConfig
        import mgm
        config = AutoConfig.from_pretrained({ckpt!r})
        assert type(AutoModelForCausalLM.from_config(config)).__name__ == "MGMLlamaForCausalLM"
        try:
            mgm.NoSuchThing
        except AttributeError as exc:
            assert "NoSuchThing" in str(exc)
        print("ok-2")
    """)
    for code, marker in ((script, "ok-1"), (first_transformers, "ok-2")):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert marker in run.stdout


def test_utils_names_and_behaviour(tmp_path, monkeypatch):
    from mgm import utils

    assert utils.server_error_msg.startswith("**NETWORK ERROR")
    assert utils.moderation_msg.startswith("YOUR INPUT VIOLATES")
    assert utils.pretty_print_semaphore(None) == "None"
    sem = asyncio.Semaphore(2)
    assert utils.pretty_print_semaphore(sem) == "Semaphore(value=2, locked=False)"

    # build_logger leaves stdout/stderr alone unless asked, and writes the original's line format
    stdout, stderr = sys.stdout, sys.stderr
    logger = utils.build_logger("dropin_test", "dropin.log", logdir=str(tmp_path))
    assert sys.stdout is stdout and sys.stderr is stderr
    logger.info("hello file")
    for h in logger.handlers:
        h.flush()
    line = (tmp_path / "dropin.log").read_text().strip()
    assert line.endswith("| INFO | dropin_test | hello file")

    monkeypatch.setattr(sys, "stdout", sys.stdout)  # restored after the test
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    utils.build_logger("dropin_test2", "dropin2.log", redirect_std=True, logdir=str(tmp_path))
    assert isinstance(sys.stdout, utils.StreamToLogger)
    print("through the logger")
    sys.stdout.flush()
    assert "| INFO | stdout | through the logger" in (tmp_path / "dropin2.log").read_text()

    # moderation: no key is an error naming the variable; a failing endpoint is "not flagged"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(KeyError, match="OPENAI_API_KEY"):
        utils.violates_moderation("text")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setattr(utils, "MODERATION_URL", "http://127.0.0.1:9/v1/moderations")
    assert utils.violates_moderation("some\ntext") is False


def test_stream_to_logger_buffers_partial_lines():
    from mgm.utils import StreamToLogger

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("dropin_stream")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    stream = StreamToLogger(logger)
    stream.write("a\nb")
    assert records == ["a"]
    stream.write("c\n")
    stream.write("tail")
    stream.flush()
    assert records == ["a", "bc", "tail"]


def test_disable_torch_init_skips_linear_and_layernorm_init(monkeypatch):
    from mgm.utils import disable_torch_init

    for cls in (torch.nn.Linear, torch.nn.LayerNorm):
        monkeypatch.setattr(cls, "reset_parameters", cls.reset_parameters)  # restored after the test
    disable_torch_init()
    calls = []
    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", lambda *a, **k: calls.append(a))
    torch.nn.Linear(4, 4)
    torch.nn.LayerNorm(4)
    assert calls == []


@pytest.mark.parametrize("name", ["MGM-Tiny-Vicuna", "MGM-Tiny-Vicuna-HD"])
def test_encode_images_accepts_any_float_dtype(loaded_models, name):
    """fp16 images (what the original scripts send) on an fp32 model: fp32 features equal to fp32 input's."""
    _, model, _, _ = loaded_models(name)
    s = model.mgm_settings
    side = model.get_vision_tower().config.image_size
    torch.manual_seed(0)
    shape = (1, s.num_views, 3, side, side) if s.image_grid > 1 else (1, 3, side, side)
    images = torch.randn(shape).half()
    aux = torch.randn(1, 3, s.image_size_aux, s.image_size_aux).half()
    with torch.no_grad():
        half_in = model.encode_images(images, aux)
        full_in = model.encode_images(images.float(), aux.float())
    assert half_in.dtype == torch.float32
    torch.testing.assert_close(half_in, full_in, rtol=1e-3, atol=1e-3)


def test_bf16_model_takes_fp16_images_and_generates(tiny_zoo):
    from mgm.mm_utils import tokenizer_image_token
    from mgm.model.builder import load_pretrained_model

    tok, model, _, _ = load_pretrained_model(tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"], None,
                                             "MGM-Tiny-Vicuna", device="cpu", dtype=torch.bfloat16)
    s = model.mgm_settings
    side = model.get_vision_tower().config.image_size
    images = torch.randn(1, 3, side, side, dtype=torch.float16)
    aux = torch.randn(1, 3, s.image_size_aux, s.image_size_aux, dtype=torch.float16)
    with torch.no_grad():
        feats = model.encode_images(images, aux)
    assert feats.dtype == torch.bfloat16
    ids = tokenizer_image_token("USER: <image>\nhi ASSISTANT:", tok, return_tensors="pt").unsqueeze(0)
    out = model.generate(ids, images=images, images_aux=aux, do_sample=False, max_new_tokens=3,
                         pad_token_id=tok.pad_token_id)
    assert out.shape[1] >= 1


def test_registration_is_thread_safe_and_idempotent():
    from mgm.registration import register_auto_classes

    threads = [threading.Thread(target=register_auto_classes) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    from transformers import AutoConfig

    assert type(AutoConfig.for_model("mgm_gemma")).__name__ == "MGMGemmaConfig"

