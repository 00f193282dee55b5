"""The model worker's settings and command line (`python -m mgm.serve.model_worker --help`).

`WorkerSettings` holds everything a worker needs (checked on creation: a bad flag is a UserError naming
it); `build_parser` / `parse_settings` map the command line 1:1 onto it.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from mgm.constants import WORKER_HEART_BEAT_INTERVAL
from mgm.conversation import conv_templates
from mgm.errors import UserError
from mgm.serve.limits import (
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_REQUEST_PIXELS,
    DEFAULT_MAX_STOP_CHARS,
    DEFAULT_MAX_STOP_STRINGS,
    RequestLimits,
)
from mgm.serve.security import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
)
from mgm.program import program_name

API_KEY_ENV = "MGM_WORKER_API_KEY"  # the worker key (= the controller's --worker-api-key)
DEFAULT_GEN_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"


# --- settings ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerSettings:
    """Everything the worker needs; the CLI flags map 1:1 onto these fields (see build_parser)."""

    model_path: str = ""
    model_base: str | None = None
    model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 21002
    worker_address: str = "http://127.0.0.1:21002"
    controller_address: str = "http://127.0.0.1:21001"
    device: str = "auto"
    load_8bit: bool = False
    load_4bit: bool = False
    quantization: str | None = None  # "int8" / "int4": weight-only LLM linears (mgm.model.quantize)
    use_flash_attn: bool = False
    conv_mode: str | None = None
    limit_model_concurrency: int = 5
    max_batch_size: int | None = None
    batch_window: float = 0.02
    batching: str = "continuous"
    stream_interval: int = 1
    chunk_interval: float = 0.02
    no_register: bool = False
    heart_beat_interval: float = float(WORKER_HEART_BEAT_INTERVAL)
    api_key: str | None = None
    allow_remote_images: bool = False
    allow_local_images: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_stop_strings: int = DEFAULT_MAX_STOP_STRINGS
    max_stop_chars: int = DEFAULT_MAX_STOP_CHARS
    max_images: int = DEFAULT_MAX_IMAGES
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    ocr: bool = False
    ocr_backend: str = "auto"
    gen: bool = False
    gen_model_path: str = DEFAULT_GEN_MODEL
    gen_cpu_offload: bool = False
    num_threads: int | None = None
    log_dir: str | None = None
    image_cache_mb: int = 256
    prefix_cache_mb: int = 1024
    no_prefix_cache: bool = False

    def __post_init__(self) -> None:
        for flag, value in (("--image-cache-mb", self.image_cache_mb), ("--prefix-cache-mb", self.prefix_cache_mb)):
            if value < 0:
                raise UserError(f"{flag} must be >= 0 (0 = off), got {value}")
        if self.load_8bit and self.load_4bit:
            raise UserError("--load-8bit and --load-4bit are mutually exclusive")
        if self.limit_model_concurrency < 1:
            raise UserError(f"--limit-model-concurrency must be >= 1, got {self.limit_model_concurrency}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise UserError(f"--max-batch-size must be >= 1, got {self.max_batch_size}")
        if self.batching not in ("continuous", "window"):
            raise UserError(f"--batching {self.batching!r} must be continuous or window")
        if self.batch_window < 0:
            raise UserError(f"--batch-window-ms must be >= 0, got {self.batch_window * 1000:g}")
        if self.chunk_interval < 0:
            raise UserError(f"--chunk-interval-ms must be >= 0, got {self.chunk_interval * 1000:g}")
        if self.stream_interval < 1:
            raise UserError(f"--stream-interval must be >= 1, got {self.stream_interval}")
        if self.num_threads is not None and self.num_threads < 1:
            raise UserError(f"--num-threads must be >= 1, got {self.num_threads}")
        if self.body_timeout <= 0:
            raise UserError(f"--body-timeout must be > 0, got {self.body_timeout}")
        if self.heart_beat_interval <= 0:
            raise UserError(f"--heart-beat-interval must be > 0, got {self.heart_beat_interval}")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port {self.port} is not a TCP port (0-65535)")
        try:
            self.limits.check()
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if self.api_key == "":
            raise UserError(f"--api-key (or ${API_KEY_ENV}) is empty: give a key, or leave it out for no key")
        if self.conv_mode is not None and self.conv_mode not in conv_templates:
            raise UserError(f"--conv-mode {self.conv_mode!r} is unknown; valid: {', '.join(sorted(conv_templates))}")
        for flag, url in (("--worker-address", self.worker_address), ("--controller-address", self.controller_address)):
            if not url.startswith(("http://", "https://")):
                raise UserError(f"{flag} {url!r} must be an http(s) URL, e.g. http://127.0.0.1:PORT")

    @property
    def limits(self) -> RequestLimits:
        """The per-request work bounds (mgm.serve.limits)."""
        return RequestLimits(max_stop_strings=self.max_stop_strings, max_stop_chars=self.max_stop_chars,
                             max_images=self.max_images, max_request_pixels=self.max_request_pixels)

    @property
    def batch_size(self) -> int:
        return self.max_batch_size or self.limit_model_concurrency

    @property
    def cache_bytes(self) -> tuple[int, int]:
        """(image-feature cache, KV prefix cache) bounds in bytes; 0 = off."""
        return self.image_cache_mb << 20, 0 if self.no_prefix_cache else self.prefix_cache_mb << 20



# --- CLI ---------------------------------------------------------------------------------------------
def build_parser(engine_quantization: bool = True) -> argparse.ArgumentParser:
    """The worker's flags; `engine_quantization=False` leaves `--quantization` to a parser that adds its own
    (the vLLM worker's means vLLM's quantisation methods)."""
    p = argparse.ArgumentParser(
        prog=program_name("python -m mgm.serve.model_worker"),
        description="Serve one MGM model: the original worker protocol for the controller and the web demo, "
                    "plus an OpenAI-compatible /v1/chat/completions. Concurrent requests are batched.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=21002, help="TCP port (default 21002)")
    p.add_argument("--worker-address", "--worker", default=None,
                   help="this worker's URL as the controller reaches it (default http://<host>:<port>)")
    p.add_argument("--controller-address", "--controller", default="http://127.0.0.1:21001",
                   help="the controller's URL (default http://127.0.0.1:21001)")
    p.add_argument("--model-path", required=True, help="MGM checkpoint folder (or hub id)")
    p.add_argument("--model-base", default=None, help="base LLM for projector-only or LoRA folders")
    p.add_argument("--model-name", default=None,
                   help="name clients ask for (default: the last part of --model-path, run_checkpoint-N for "
                        "checkpoint folders)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--multi-modal", action="store_true", help="deprecated and ignored (kept for old scripts)")
    p.add_argument("--conv-mode", default=None,
                   help="prompt template for /v1 requests and OCR/GEN placement (default: from the model config)")
    p.add_argument("--limit-model-concurrency", type=int, default=5,
                   help="requests generated at once (batched); more wait in a queue (default 5)")
    p.add_argument("--max-batch-size", type=int, default=None,
                   help="most requests in one batched generation (default: --limit-model-concurrency)")
    p.add_argument("--batching", choices=("continuous", "window"), default="continuous",
                   help="continuous (default): requests join and leave the running batch between tokens; "
                        "window: requests that arrive together are generated together, one batch at a time")
    p.add_argument("--batch-window-ms", type=float, default=20.0,
                   help="an idle worker gathers requests until none arrives for this long (default 20)")
    p.add_argument("--stream-interval", type=int, default=1,
                   help="send a stream chunk every N text updates (default 1: every update)")
    p.add_argument("--chunk-interval-ms", type=float, default=20.0,
                   help="gather a stream's new text for up to this long between chunks (default 20; 0 = a chunk "
                        "per token). Fewer chunks keep many concurrent streams cheap")
    p.add_argument("--no-register", action="store_true", help="do not register with the controller")
    p.add_argument("--heart-beat-interval", type=float, default=float(WORKER_HEART_BEAT_INTERVAL),
                   help=f"seconds between heart beats to the controller (default {WORKER_HEART_BEAT_INTERVAL})")
    p.add_argument("--load-8bit", action="store_true", help="quantise the LLM to 8 bit (bitsandbytes)")
    p.add_argument("--load-4bit", action="store_true", help="quantise the LLM to 4 bit (bitsandbytes)")
    if engine_quantization:
        p.add_argument("--quantization", choices=("int8", "int4"), default=None,
                       help="weight-only LLM quantisation on the CPU, PyTorch's own kernels (mgm.model.quantize): "
                            "int8 (per channel) or int4 (groups of 128); towers and mining stay in the compute "
                            "dtype. GPU: --load-8bit/--load-4bit")
    p.add_argument("--use-flash-attn", action="store_true", help="flash-attention 2 (CUDA + flash-attn installed)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"the worker key: required (Authorization: Bearer or x-api-key) on every route but GET "
                        f"/health, and sent to the controller to register and beat; give the controller the same "
                        f"key as its --worker-api-key (default: ${API_KEY_ENV})")
    p.add_argument("--allow-remote-images", action="store_true",
                   help="let /v1 clients send http(s) image URLs for the worker to fetch (default: refused)")
    p.add_argument("--allow-local-images", action="store_true",
                   help="let /v1 clients name image files on this machine (default: refused)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"refuse larger request bodies with 413 (default {DEFAULT_MAX_BODY_BYTES})")
    p.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_IMAGE_BYTES,
                   help=f"refuse larger image files with 413 (default {DEFAULT_MAX_IMAGE_BYTES})")
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                   help=f"refuse images with more pixels with 413 (default {DEFAULT_MAX_IMAGE_PIXELS})")
    p.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT,
                   help=f"seconds a client has to send its whole request body; slower ones get 408 (default "
                        f"{DEFAULT_BODY_TIMEOUT:g})")
    p.add_argument("--max-stop-strings", type=int, default=DEFAULT_MAX_STOP_STRINGS,
                   help=f"refuse requests with more stop strings with 400 (default {DEFAULT_MAX_STOP_STRINGS})")
    p.add_argument("--max-stop-chars", type=int, default=DEFAULT_MAX_STOP_CHARS,
                   help=f"refuse a longer stop string with 400 (default {DEFAULT_MAX_STOP_CHARS})")
    p.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES,
                   help=f"refuse requests with more images with 400 (default {DEFAULT_MAX_IMAGES})")
    p.add_argument("--max-request-pixels", type=int, default=DEFAULT_MAX_REQUEST_PIXELS,
                   help=f"refuse requests whose images hold more pixels together with 413 (default "
                        f"{DEFAULT_MAX_REQUEST_PIXELS}); images are decoded only once a request holds one of "
                        f"--limit-model-concurrency slots, so decoded images take at most about slots x this x "
                        f"7 bytes")
    p.add_argument("--ocr", action="store_true", help="load an OCR engine so requests with use_ocr get OCR hints")
    p.add_argument("--ocr-backend", default="auto", choices=("auto", "rapidocr", "paddle"),
                   help="OCR engine (default auto: PaddleOCR with local model folders if configured, else rapidocr)")
    p.add_argument("--gen", action="store_true",
                   help="load a text-to-image pipeline so requests with gen_image return a generated picture")
    p.add_argument("--gen-model-path", default=DEFAULT_GEN_MODEL,
                   help=f"diffusers pipeline folder or hub id for --gen (default {DEFAULT_GEN_MODEL})")
    p.add_argument("--gen-cpu-offload", action="store_true", help="keep the --gen pipeline on the CPU between uses (CUDA)")
    p.add_argument("--num-threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice). On a shared or small CPU, 1 avoids "
                        "OpenMP threads fighting other processes")
    p.add_argument("--image-cache-mb", type=int, default=256,
                   help="image features kept by content, so a resent image is not encoded again "
                        "(MiB, least recently used out; 0 = off; default 256; continuous batching)")
    p.add_argument("--prefix-cache-mb", type=int, default=1024,
                   help="KV of prompts and answers kept for requests that start the same way, e.g. a chat's "
                        "next turn (MiB, least recently used out; default 1024; continuous batching)")
    p.add_argument("--no-prefix-cache", action="store_true", help="do not reuse KV prefixes (--prefix-cache-mb 0)")
    p.add_argument("--log-dir", default=None, help="folder for model_worker_<id>.log (default: $MGM_LOGDIR, else ~/.local/state/mgm/logs)")
    return p


def parse_settings(argv: list[str] | None = None) -> WorkerSettings:
    """Command-line arguments → WorkerSettings (raises UserError on bad values)."""
    return settings_from_args(build_parser().parse_args(argv))


def settings_from_args(a: argparse.Namespace) -> WorkerSettings:
    """Parsed flags → WorkerSettings."""
    worker_address = a.worker_address or f"http://{'127.0.0.1' if a.host in ('0.0.0.0', '::') else a.host}:{a.port}"
    return WorkerSettings(
        model_path=a.model_path, model_base=a.model_base, model_name=a.model_name, host=a.host, port=a.port,
        worker_address=worker_address, controller_address=a.controller_address, device=a.device,
        load_8bit=a.load_8bit, load_4bit=a.load_4bit,
        quantization=a.quantization,
        use_flash_attn=a.use_flash_attn, conv_mode=a.conv_mode,
        limit_model_concurrency=a.limit_model_concurrency, max_batch_size=a.max_batch_size,
        batch_window=a.batch_window_ms / 1000.0, batching=a.batching, stream_interval=a.stream_interval,
        chunk_interval=a.chunk_interval_ms / 1000.0, no_register=a.no_register,
        heart_beat_interval=a.heart_beat_interval, api_key=a.api_key,
        allow_remote_images=a.allow_remote_images, allow_local_images=a.allow_local_images,
        max_body_bytes=a.max_body_bytes, max_image_bytes=a.max_image_bytes, max_image_pixels=a.max_image_pixels,
        max_stop_strings=a.max_stop_strings, max_stop_chars=a.max_stop_chars, max_images=a.max_images,
        max_request_pixels=a.max_request_pixels, body_timeout=a.body_timeout,
        ocr=a.ocr, ocr_backend=a.ocr_backend, gen=a.gen, gen_model_path=a.gen_model_path,
        gen_cpu_offload=a.gen_cpu_offload, num_threads=a.num_threads, log_dir=a.log_dir,
        image_cache_mb=a.image_cache_mb, prefix_cache_mb=a.prefix_cache_mb, no_prefix_cache=a.no_prefix_cache)
