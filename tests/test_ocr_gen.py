"""OCR hints and reasoning-driven image generation: rapidocr reads rendered text offline, the hints and the
<GEN> tag reach the prompt in the right place, `<h>...</h>` prompts drive a tiny random SDXL pipeline built
locally (worker and CLI), and the CLI runs end to end with --ocr --gen."""
from __future__ import annotations

import base64
import io
import os
import subprocess
import sys

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont
from serving_helpers import build_zoo, image_b64, load_engine, make_worker, model_path, start_worker, vicuna_prompt

from mgm.errors import UserError
from mgm.inference import batcher as batcher_mod
from mgm.serve.engine import RowResult
from mgm.serve.imagegen import NEG, generate_image, hidden_prompt, load_pipeline
from mgm.serve.ocr import build_ocr, join_texts
from mgm.serve.protocol import iter_chunks

pytestmark = pytest.mark.timeout(180)

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


@pytest.fixture(scope="module")
def hello_image() -> Image.Image:
    if not os.path.exists(FONT):
        pytest.skip(f"{FONT} is missing (Debian package fonts-dejavu-core)")
    image = Image.new("RGB", (900, 200), "white")
    ImageDraw.Draw(image).text((40, 60), "HELLO WORLD 2024", fill="black", font=ImageFont.truetype(FONT, 64))
    return image


@pytest.fixture(scope="module")
def ocr():
    pytest.importorskip("rapidocr")
    return build_ocr()


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    pytest.importorskip("diffusers")
    from mgm.zoo.sdxl import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl"), seed=0)


@pytest.fixture(scope="module")
def pipe(sdxl_dir):
    return load_pipeline(str(sdxl_dir), device="cpu")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(zoo):
    return load_engine(model_path(zoo))


class FastPipe:
    """The tiny pipeline with 2 denoising steps (the default 50 are only slow, not different)."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __call__(self, **kwargs):
        return self.pipe(num_inference_steps=2, **kwargs)


def fake_generation(monkeypatch, answer: str) -> list[str]:
    """Make a window-mode batcher 'generate' `answer` for every row; returns the prompts it was given."""
    prompts: list[str] = []

    def generate_rows(engine, requests, on_text=None, cancelled=None, on_done=None):
        results = []
        for i, request in enumerate(requests):
            prompts.append(request.prompt)
            if on_text is not None:
                on_text(i, answer)
            results.append(RowResult(text=answer, completion_tokens=7, finish_reason="stop"))
            if on_done is not None:
                on_done(i, results[-1])
        return results

    monkeypatch.setattr(batcher_mod, "generate_rows", generate_rows)
    return prompts


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# --- OCR ---------------------------------------------------------------------------------------------
def test_rapidocr_reads_a_rendered_line_offline(ocr, hello_image):
    assert ocr.name == "rapidocr"
    text = ocr.read(hello_image)
    assert text.replace(", ", " ") == "HELLO WORLD 2024"
    assert ocr.read(Image.new("RGB", (200, 100), "white")) == ""


def test_ocr_confidence_rule_and_backend_errors(monkeypatch):
    assert join_texts(["a", "b", "c", ""], [0.9, 0.1, 0.11, 0.9]) == "a, c"
    with pytest.raises(UserError, match="--ocr-backend"):
        build_ocr("tesseract")
    for var in ("MGM_PADDLEOCR_DET_DIR", "MGM_PADDLEOCR_REC_DIR"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="MGM_PADDLEOCR_DET_DIR"):
        build_ocr("paddle")


def test_worker_adds_ocr_hints_before_the_assistant_turn(loaded, ocr, hello_image, monkeypatch):
    engine, conv_mode = loaded
    prompts = fake_generation(monkeypatch, "It says hello.")
    worker = make_worker(engine, conv_mode, batching="window")  # window mode runs the patched generate_rows
    worker.ocr = ocr
    server = start_worker(worker)
    try:
        prompt = vicuna_prompt("What does it say?")
        payload = {"prompt": prompt, "images": [png_b64(hello_image)], "use_ocr": True, "max_new_tokens": 8}
        with httpx.stream("POST", server.url + "/worker_generate_stream", json=payload, timeout=60,
                          trust_env=False) as r:
            chunks = list(iter_chunks(r.iter_bytes()))
    finally:
        server.stop()
    assert prompts == [prompt.replace("What does it say? ASSISTANT:",
                                      "What does it say?\nReference OCR Token: HELLO, WORLD, 2024\n ASSISTANT:")]
    # the client sees its own prompt, not the edited one
    assert chunks[-1] == {"text": prompt + "It says hello.", "error_code": 0}


# --- image generation --------------------------------------------------------------------------------
def test_hidden_prompt_first_and_last_pair():
    text = "Sure! <h>a red car</h> and <h>a blue boat</h>."
    assert hidden_prompt(text, last=False) == "a red car"
    assert hidden_prompt(text, last=True) == "a blue boat"
    assert hidden_prompt("no markers", last=True) is None
    assert hidden_prompt("only <h>open", last=False) is None


def test_negative_prompt_is_the_originals():
    words = NEG.split(", ")
    assert len(words) == 38 and words[:3] == ["out of frame", "lowres", "text"] and words[-1] == "signature"
    assert words.count("out of frame") == 2


def test_tiny_sdxl_generates_an_image(pipe, sdxl_dir, tmp_path):
    image = generate_image(pipe, "a red car", num_inference_steps=2)
    assert isinstance(image, Image.Image) and image.size == (32, 32)
    again = generate_image(pipe, "a red car", num_inference_steps=2, generator=__import__("torch").manual_seed(0))
    assert again.size == image.size
    with pytest.raises(UserError, match="model_index.json"):
        load_pipeline(str(tmp_path), device="cpu")


def test_worker_gen_path_returns_the_picture(loaded, pipe, monkeypatch):
    engine, conv_mode = loaded
    prompts = fake_generation(monkeypatch, "Here you go. <h>a red car on a beach</h> Enjoy.")
    worker = make_worker(engine, conv_mode, batching="window")  # window mode runs the patched generate_rows
    worker.pipe = FastPipe(pipe)
    server = start_worker(worker)
    try:
        prompt = vicuna_prompt("Draw a car.")
        payload = {"prompt": prompt, "images": [image_b64()], "gen_image": True, "max_new_tokens": 16}
        with httpx.stream("POST", server.url + "/worker_generate_stream", json=payload, timeout=60,
                          trust_env=False) as r:
            chunks = list(iter_chunks(r.iter_bytes()))
        status = httpx.post(server.url + "/worker_get_status", trust_env=False).json()
    finally:
        server.stop()
    assert status["gen"] is True
    assert prompts == [prompt.replace("Draw a car. ASSISTANT:", "Draw a car. <GEN> ASSISTANT:")]
    final = chunks[-1]
    assert set(final) == {"text", "image", "error_code"} and final["error_code"] == 0
    assert final["text"] == prompt + "Here you go. " + "\nPrompt: a red car on a beach\n"
    picture = Image.open(io.BytesIO(base64.b64decode(final["image"])))
    assert picture.format == "JPEG" and picture.size == (32, 32)
    assert all("image" not in c for c in chunks[:-1])


def test_cli_gen_saves_the_picture(zoo, pipe, sdxl_dir, tmp_path, monkeypatch, capsys):
    from mgm.serve import cli, engine as engine_mod

    def stream(self, request, cancel=None):
        assert request.prompt.rstrip().endswith("Draw a car. <GEN> ASSISTANT:")
        yield "Sure. <h>a car</h> <h>a red car</h>"

    monkeypatch.setattr(engine_mod.InferenceEngine, "stream", stream)
    monkeypatch.setattr("mgm.serve.imagegen.load_pipeline", lambda *a, **k: FastPipe(pipe))
    monkeypatch.setattr(sys, "stdin", io.StringIO("Draw a car.\n\n"))
    out = tmp_path / "generate.png"
    assert cli.main(["--model-path", model_path(zoo), "--device", "cpu", "--gen", "--gen-model-path",
                     str(sdxl_dir), "--output-file", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"Generate an image, save at {out}" in printed
    assert Image.open(out).size == (32, 32)


def test_cli_runs_end_to_end_with_ocr_and_gen(zoo, sdxl_dir, hello_image, tmp_path):
    pytest.importorskip("rapidocr")
    image_path = tmp_path / "hello.png"
    hello_image.save(image_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "mgm.serve.cli", "--model-path", model_path(zoo), "--device", "cpu",
         "--image-file", str(image_path), "--ocr", "--gen", "--gen-model-path", str(sdxl_dir),
         "--output-file", str(tmp_path / "out.png"), "--temperature", "0", "--max-new-tokens", "12"],
        input="What does the sign say?\n", capture_output=True, text=True, env=env, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OCR Token: HELLO, WORLD, 2024" in result.stdout
    assert "ASSISTANT: " in result.stdout and result.stdout.rstrip().endswith("exit...")
    # a random model almost never writes <h>...</h>; when it does, the picture must be there
    if "Generate an image, save at" in result.stdout:
        assert (tmp_path / "out.png").is_file()
