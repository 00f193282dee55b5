"""Helpers shared by the serving tests (not a test module): real uvicorn servers on free 127.0.0.1 ports
in daemon threads, the tiny model zoo, a loaded tiny engine, workers around it, fake workers (no model)
and small images."""
from __future__ import annotations

import base64
import io
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from PIL import Image

from mgm.serve.openai_protocol import (
    SSE_DONE,
    AssistantMessage,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    DeltaMessage,
    Usage,
    make_completion_id,
    sse_event,
)
from mgm.serve.protocol import encode_chunk

ZOO_FAMILIES = ("vicuna",)  # the serving tests need one small model; other files may build more
TINY_MODEL = "MGM-Tiny-Vicuna"


class ServerThread:
    """A uvicorn server for `app` on a free 127.0.0.1 port, in a daemon thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port or 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_zoo(tmp_path_factory: Any) -> dict[str, Any]:
    """The tiny zoo (vicuna family) under the session's base temp dir; built once, reused after."""
    from mgm.zoo.tiny import build_tiny_zoo

    return build_tiny_zoo(Path(tmp_path_factory.getbasetemp()) / "serve_zoo" / "model_zoo", seed=0,
                          families=ZOO_FAMILIES)


def model_path(manifest: dict[str, Any], name: str = TINY_MODEL) -> str:
    return manifest["checkpoints"][name]["path"]


def load_engine(path: str):
    """(InferenceEngine, conv_mode) for a checkpoint folder, on the CPU."""
    from mgm.conversation import template_for_model_config
    from mgm.model.builder import load_pretrained_model
    from mgm.serve.engine import InferenceEngine

    tokenizer, model, processor, context_len = load_pretrained_model(path, None, Path(path).name, device="cpu")
    return InferenceEngine(tokenizer, model, processor, context_len), template_for_model_config(model.config, tokenizer)


def make_worker(engine: Any, conv_mode: str, *, model_name: str = TINY_MODEL, controller: str | None = None,
                worker_port: int | None = None, **settings: Any):
    """A ModelWorker around an already loaded engine (registers only when `controller` is given)."""
    from mgm.serve.model_worker import ModelWorker, WorkerSettings

    port = worker_port or free_port()
    ws = WorkerSettings(model_path="(preloaded)", model_name=model_name, port=port,
                        worker_address=f"http://127.0.0.1:{port}",
                        controller_address=controller or "http://127.0.0.1:9", no_register=controller is None,
                        **settings)
    return ModelWorker(ws, engine, model_name=model_name, conv_mode=conv_mode)


def start_worker(worker: Any, wait_registered: bool = True) -> ServerThread:
    """Serve `worker`; when it registers with a controller, wait until the controller accepted it."""
    from mgm.serve.model_worker import create_app

    server = ServerThread(create_app(worker), port=worker.settings.port)
    if worker.link is not None and wait_registered and not worker.link.registered.wait(20):
        server.stop()
        raise RuntimeError("the worker did not register with its controller within 20 s")
    return server


def image_bytes(size: tuple[int, int] = (48, 40), color: str = "red", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def image_b64(size: tuple[int, int] = (48, 40), color: str = "red", fmt: str = "PNG") -> str:
    return base64.b64encode(image_bytes(size, color, fmt)).decode()


def data_url(size: tuple[int, int] = (48, 40), color: str = "red") -> str:
    return "data:image/png;base64," + image_b64(size, color)


def vicuna_prompt(question: str, n_images: int = 1) -> str:
    from mgm.conversation import get_template

    conv = get_template("vicuna_v1")
    conv.append_message(conv.roles[0], "<image>\n" * n_images + question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


# --- a fake model worker (no model): the worker protocol with canned answers ---------------------------
def png_bytes(size: tuple[int, int] = (8, 6), color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class FakeWorker:
    """A stand-in model worker: status, a 3-chunk generation stream, OpenAI chat, and an image file."""

    name: str
    model_names: list[str]
    speed: float = 1
    queue_length: int = 0
    requests: list[dict] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)  # the Authorization header of every request
    server: ServerThread | None = None

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def record_auth(request: Request, call_next):
            self.auth.append(request.headers.get("authorization"))
            return await call_next(request)

        @app.post("/worker_get_status")
        async def status():
            return {"model_names": self.model_names, "speed": self.speed, "queue_length": self.queue_length}

        @app.post("/worker_generate_stream")
        async def generate(request: Request):
            params = await request.json()
            self.requests.append(params)
            prompt = params["prompt"]

            async def stream():
                text = prompt
                for word in [f"[{self.name}]", " héllo", " wörld"]:
                    text += word
                    data = encode_chunk({"text": text, "error_code": 0})
                    # split each chunk in two pieces (inside a UTF-8 character too) to exercise re-framing
                    yield data[: len(data) // 2]
                    yield data[len(data) // 2:]

            return StreamingResponse(stream())

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = ChatCompletionRequest.model_validate(await request.json())
            self.requests.append(body.model_dump())
            text, _ = body.messages[-1].text_and_image_urls()
            answer = f"{self.name} says: {text}"
            if not body.stream:
                return ChatCompletionResponse(
                    model=body.model, usage=Usage.of(3, 4),
                    choices=[ChatCompletionChoice(message=AssistantMessage(content=answer))]).model_dump()
            cid = make_completion_id()

            async def events():
                yield sse_event(ChatCompletionChunk(id=cid, model=body.model, choices=[
                    ChatCompletionStreamChoice(delta=DeltaMessage(role="assistant", content=""))]))
                for word in answer.split(" "):
                    yield sse_event(ChatCompletionChunk(id=cid, model=body.model, choices=[
                        ChatCompletionStreamChoice(delta=DeltaMessage(content=word + " "))]))
                yield sse_event(ChatCompletionChunk(id=cid, model=body.model, choices=[
                    ChatCompletionStreamChoice(delta=DeltaMessage(), finish_reason="stop")]))
                yield SSE_DONE

            return StreamingResponse(events(), media_type="text/event-stream")

        @app.get("/img.png")
        async def img():
            return Response(png_bytes(), media_type="image/png")

        @app.get("/big.bin")
        async def big():
            return Response(b"\0" * 5000, media_type="application/octet-stream")

        return app

    def start(self) -> FakeWorker:
        self.server = ServerThread(self.app())
        self.name = self.server.url
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def status(self) -> dict:
        return {"model_names": self.model_names, "speed": self.speed, "queue_length": self.queue_length}


def start_fake(models: list[str], **kw) -> FakeWorker:
    return FakeWorker(name="", model_names=models, **kw).start()
