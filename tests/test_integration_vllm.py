"""MGM on vLLM (mgm.integrations.vllm, mgm.serve.vllm_worker), run for real on vLLM's CPU backend.

Needs the vLLM environment (scripts/setup_vllm_venv.sh); skipped where vllm does not import. Tiny
checkpoints in the original layout with head_dim 32 (mgm.integrations.vllm.tiny_zoo), normal and
HD, Llama and Mixtral: greedy tokens from vLLM equal mgm's engine token for token (no image, one,
two; text prompts and the worker's token-id prompts), the image features vLLM scatters into the
prompt equal mgm's `encode_images`, bad checkpoints fail with mgm's loader messages, and the vLLM
worker answers the original protocol and /v1 like mgm's engine after registering with a controller.
Set MGM_VLLM_ZOO=<dir> to reuse the checkpoints between runs.
"""
from __future__ import annotations

import base64
import functools
import io
import json
import os
import shutil
import time

import pytest

pytest.importorskip("vllm")

import httpx  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from serving_helpers import ServerThread, free_port, vicuna_prompt  # noqa: E402

from mgm.errors import UserError  # noqa: E402
from mgm.integrations.vllm.tiny_zoo import build_vllm_zoo  # noqa: E402
from mgm.serve.engine import GenerationParams, InferenceEngine, Request  # noqa: E402

pytestmark = pytest.mark.timeout(900)

CHECKPOINTS = ("MGM-Tiny-Vicuna-H32", "MGM-Tiny-Vicuna-H32-HD", "MGM-Tiny-Mixtral-H32", "MGM-Tiny-Mixtral-H32-HD")
MAX_NEW = 12


def _images() -> list[Image.Image]:
    gen = torch.Generator().manual_seed(0)
    noise = (torch.rand(60, 44, 3, generator=gen) * 255).to(torch.uint8).numpy()
    return [Image.new("RGB", (40, 30), (200, 10, 30)), Image.fromarray(noise, "RGB")]


def _prompts() -> list[tuple[str, list[Image.Image]]]:
    one, two = _images()
    return [(vicuna_prompt("Say something about cats.", 0), []),
            (vicuna_prompt("What is in the picture?"), [one]),
            (vicuna_prompt("Compare the two pictures.", 2), [one, two])]


@pytest.fixture(scope="session")
def vllm_zoo(tmp_path_factory):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    root = os.environ.get("MGM_VLLM_ZOO") or tmp_path_factory.mktemp("vllm_zoo")
    return build_vllm_zoo(root, list(CHECKPOINTS))


def _load_mgm(path: str) -> InferenceEngine:
    from mgm.model.builder import load_pretrained_model

    tokenizer, model, processor, context = load_pretrained_model(path, device="cpu", dtype=torch.float32)
    return InferenceEngine(tokenizer, model, processor, context)


def _vllm(path: str, max_len: int):
    from vllm import LLM

    return LLM(model=path, dtype="float32", enforce_eager=True, max_model_len=max_len, max_num_seqs=4,
               limit_mm_per_prompt={"image": 2}, seed=0)


@pytest.fixture(scope="module", params=CHECKPOINTS)
def pair(request, vllm_zoo):
    """(name, mgm engine, vllm.LLM) for one checkpoint; the LLM is shut down before the next one."""
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # apply_model ships a function to the worker
    path = vllm_zoo[request.param]
    engine = _load_mgm(path)
    llm = _vllm(path, engine.model.config.max_position_embeddings)
    yield request.param, engine, llm
    llm.llm_engine.engine_core.shutdown()


def _mgm_tokens(engine: InferenceEngine, prompt: str, images: list) -> list[int]:
    ids = engine.generate_ids([Request(prompt, images, GenerationParams(temperature=0, max_new_tokens=MAX_NEW))])[0]
    out = ids.tolist()
    for i, t in enumerate(out):  # generation pads with pad/eos after the end of the answer
        if t in engine.eos_ids:
            return out[: i + 1]
    return out


def test_greedy_tokens_equal_mgm_engine(pair):
    from vllm import SamplingParams

    from mgm.constants import IMAGE_TOKEN_INDEX
    from mgm.integrations.vllm.config import image_placeholder_id

    name, engine, llm = pair
    prompts = _prompts()
    expected = [_mgm_tokens(engine, p, ims) for p, ims in prompts]
    params = SamplingParams(temperature=0, max_tokens=MAX_NEW, stop_token_ids=engine.eos_ids)
    as_text = [{"prompt": p, "multi_modal_data": {"image": ims}} if ims else {"prompt": p} for p, ims in prompts]
    placeholder = image_placeholder_id(engine.model.config, engine.tokenizer)
    as_ids = []
    for (p, ims), text_prompt in zip(prompts, as_text):
        ids = [placeholder if t == IMAGE_TOKEN_INDEX else t for t in engine.encode_prompt(Request(p, ims)).tolist()]
        as_ids.append({**{k: v for k, v in text_prompt.items() if k != "prompt"}, "prompt_token_ids": ids})
    for kind, batch in (("text", as_text), ("token ids", as_ids)):
        outs = llm.generate(batch, params, use_tqdm=False)
        got = [list(o.outputs[0].token_ids) for o in outs]
        assert got == expected, f"{name}, {kind} prompts"
        image_tokens = engine.num_image_tokens()
        for (p, ims), o in zip(prompts, outs):  # each image expanded to its feature count
            assert len(o.prompt_token_ids) == request_len(engine, p, ims, image_tokens)


def request_len(engine, prompt, images, image_tokens):
    return len(engine.encode_prompt(Request(prompt, images))) + (image_tokens - 1) * len(images)


def test_image_features_equal_encode_images(pair):
    name, engine, llm = pair
    images = _images()
    processor = llm.llm_engine.renderer.get_mm_processor()
    batch = processor._call_hf_processor({"images": images}, {})
    lr, hr = engine.image_tensors(images)
    assert torch.equal(batch["images"], lr)
    if hr is not None:
        assert torch.equal(batch["images_aux"], hr)
    with torch.inference_mode():
        expected = engine.model.encode_images(lr, hr)
    from mgm.integrations.vllm.model import image_features

    got = torch.stack(llm.apply_model(functools.partial(image_features, fields=dict(batch)))[0])
    assert got.shape == expected.shape == (2, engine.num_image_tokens(), engine.model.config.hidden_size)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"{name}: image features")


# --- bad checkpoints ------------------------------------------------------------------------------
def _copy(src: str, dst, **config_changes) -> str:
    shutil.copytree(src, dst)
    cfg_file = dst / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(config_changes)
    cfg_file.write_text(json.dumps(cfg))
    return str(dst)


@pytest.mark.parametrize("change", [{"model_type": "mgm_falcon"},
                                    {"mm_vision_tower": "/nonexistent/clip-vit-tiny-patch4-32"}])
def test_bad_checkpoint_gives_mgm_loader_message(vllm_zoo, tmp_path, change):
    from mgm.model.builder import load_pretrained_model

    bad = _copy(vllm_zoo["MGM-Tiny-Vicuna-H32"], tmp_path / "bad", **change)
    with pytest.raises(UserError) as mgm_error:
        load_pretrained_model(bad, device="cpu")
    with pytest.raises(UserError) as vllm_error:
        _vllm(bad, 512)
    assert str(vllm_error.value) == str(mgm_error.value)


# --- the vLLM worker -------------------------------------------------------------------------------
def _b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_vllm_worker_registers_and_answers_like_mgm(vllm_zoo):
    from mgm.serve.controller import ControllerSettings, create_app as controller_app
    from mgm.serve.model_worker import WorkerSettings, create_app
    from mgm.serve.protocol import iter_chunks
    from mgm.serve.vllm_worker import VLLMWorker

    path = vllm_zoo["MGM-Tiny-Vicuna-H32"]
    engine = _load_mgm(path)
    image = _images()[1]
    prompt = vicuna_prompt("What is in the picture?")
    # what mgm's own worker streams for this request: its batcher's text (incremental decoding, stop rules)
    from mgm.serve.batcher import DynamicBatcher

    batcher = DynamicBatcher(engine).start()
    try:
        expected = batcher.submit(Request(prompt, [image], GenerationParams(
            temperature=0, max_new_tokens=MAX_NEW, stop=["</s>"]))).wait(120).text
    finally:
        batcher.stop()
    controller = ServerThread(controller_app(ControllerSettings()))
    port = free_port()
    settings = WorkerSettings(model_path=path, model_name="tiny-vllm", controller_address=controller.url,
                              worker_address=f"http://127.0.0.1:{port}", heart_beat_interval=1.0)
    worker = VLLMWorker.load_vllm(settings, dict(dtype="float32", enforce_eager=True, max_model_len=512,
                                                 max_num_seqs=4, limit_mm_per_prompt={"image": 2}))
    server = ServerThread(create_app(worker), port=port)  # its start-up registers with the controller
    try:
        deadline = time.monotonic() + 30  # the worker registers from a thread once it serves
        while httpx.post(controller.url + "/list_models", trust_env=False).json()["models"] != ["tiny-vllm"]:
            assert time.monotonic() < deadline, "the vLLM worker did not register"
            time.sleep(0.2)
        payload = {"model": "tiny-vllm", "prompt": prompt, "images": [_b64(image)], "temperature": 0,
                   "max_new_tokens": MAX_NEW, "stop": "</s>"}
        with httpx.stream("POST", controller.url + "/worker_generate_stream", json=payload, timeout=120,
                          trust_env=False) as r:
            chunks = list(iter_chunks(r.iter_bytes()))
        assert chunks[-1]["error_code"] == 0
        assert chunks[-1]["text"].strip() == (prompt + expected).strip()
        body = {"model": "tiny-vllm", "max_tokens": MAX_NEW, "temperature": 0, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(image)}},
            {"type": "text", "text": "What is in the picture?"}]}]}
        answer = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120, trust_env=False).json()
        assert answer["choices"][0]["message"]["content"].strip() == expected.strip()
        assert answer["usage"]["prompt_tokens"] == request_len(engine, prompt, [image], engine.num_image_tokens())
    finally:
        server.stop()
        controller.stop()


@pytest.mark.gpu
def test_tensor_parallel_2_equals_single_gpu(vllm_zoo):
    """On a machine with two GPUs: TP=2 gives the same greedy tokens as mgm's engine."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    from vllm import LLM, SamplingParams

    path = vllm_zoo["MGM-Tiny-Mixtral-H32"]
    engine = _load_mgm(path)
    prompts = _prompts()
    expected = [_mgm_tokens(engine, p, ims) for p, ims in prompts]
    llm = LLM(model=path, dtype="float32", tensor_parallel_size=2, max_model_len=512, limit_mm_per_prompt={"image": 2})
    outs = llm.generate([{"prompt": p, "multi_modal_data": {"image": ims}} if ims else {"prompt": p}
                         for p, ims in prompts], SamplingParams(temperature=0, max_tokens=MAX_NEW,
                                                                stop_token_ids=engine.eos_ids), use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outs] == expected
