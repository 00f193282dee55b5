"""Helpers shared by the serving tests (not a test module): real uvicorn servers on free 127.0.0.1 ports
in daemon threads, the tiny model zoo, a loaded tiny engine, workers around it, and small images."""
from __future__ import annotations

import base64
import io
import socket
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

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


def start_worker(worker: Any) -> ServerThread:
    from mgm.serve.model_worker import create_app

    return ServerThread(create_app(worker), port=worker.settings.port)


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
