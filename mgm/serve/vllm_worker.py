"""A model worker backed by vLLM: mgm's controller protocol and `/v1`, vLLM's engine underneath.

    python -m mgm.serve.vllm_worker --controller http://127.0.0.1:21001 --port 21002 \\
        --model-path work_dirs/MGM-8x7B-HD --tensor-parallel-size 2

Everything a client sees is `mgm.serve.model_worker`'s (same app, routes, flags, registration and
heart beats, OCR/GEN hooks, budget rules); only generation differs: each request goes straight to
vLLM's AsyncLLM (continuous batching, paged KV cache, tensor/pipeline parallelism) through
`mgm.integrations.vllm.engine.VLLMEngine`. Needs the vLLM environment (scripts/setup_vllm_venv.sh).

Flags of ours that mean something else here: `--limit-model-concurrency` / `--max-batch-size` bound
the requests in flight (vLLM's `--max-num-seqs` defaults to the latter); `--batching` and
`--batch-window-ms` do nothing (vLLM schedules every step), nor do `--image-cache-mb` / `--prefix-cache-mb`
(vLLM's own prefix caching applies); `--load-4bit` is vLLM's bitsandbytes
quantisation; `--use-flash-attn` and `--device` are vLLM's choice; `--model-base` is refused (merge
LoRA/projector folders first with scripts/merge_lora_weights.py).
"""
from __future__ import annotations

# ruff: noqa: E402 -- the imports below come after the early argument parse on purpose
from mgm.serve.vllm_worker_args import build_parser

if __name__ == "__main__":
    # Run as a program: `--help` and flag errors answer here, before torch and vLLM load below.
    build_parser().parse_args()

import argparse
import asyncio
import dataclasses
import json
import logging
import uuid
from typing import Any

from mgm.errors import UserError, exit_on_user_error
from mgm.inference.decoding import Row
from mgm.inference.requests import Request
from mgm.inference.tickets import Ticket
from mgm.serve.logging_utils import build_logger
from mgm.serve.model_worker import ModelWorker, WorkerSettings, create_app, settings_from_args

LOGGER_NAME = "mgm.serve.vllm_worker"


class VLLMWorker(ModelWorker):
    """`ModelWorker` whose requests run on a `VLLMEngine` instead of mgm's batcher."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # its DynamicBatcher is never started
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    def load_vllm(cls, settings: WorkerSettings, engine_args: dict[str, Any], logger: logging.Logger | None = None,
                  worker_id: str | None = None) -> VLLMWorker:
        from mgm.integrations.vllm.engine import VLLMEngine
        from mgm.model_name import get_model_name_from_path

        logger = logger or logging.getLogger(LOGGER_NAME)
        if not settings.model_path:
            raise UserError("--model-path is required")
        if settings.model_base:
            raise UserError("--model-base is not supported with vLLM: merge the folder into a full checkpoint "
                            "first (python scripts/merge_lora_weights.py), then serve that")
        model_name = settings.model_name or get_model_name_from_path(settings.model_path)
        logger.info("Loading %s in vLLM (%s) on worker %s ...", model_name, engine_args, worker_id)
        engine = VLLMEngine(settings.model_path, template=settings.conv_mode, **engine_args)
        conv_mode = engine.profile.template
        ocr = pipe = None
        if settings.ocr:
            from mgm.serve.ocr import build_ocr

            ocr = build_ocr(settings.ocr_backend, settings.device)
        if settings.gen:
            from mgm.serve.imagegen import load_pipeline

            pipe = load_pipeline(settings.gen_model_path, device=settings.device, cpu_offload=settings.gen_cpu_offload)
        return cls(settings, engine, model_name=model_name, conv_mode=conv_mode, ocr=ocr, pipe=pipe,
                   logger=logger, worker_id=worker_id)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "batching": {"engine": "vllm", "in_flight": len(self._tasks)}}

    # requests go to vLLM as they come: nothing to announce or wait for
    def expect(self) -> int:
        return 0

    def fulfil(self, token: int | None) -> None:
        return None

    def submit(self, request: Request) -> Ticket:
        loop = asyncio.get_running_loop()
        ticket = Ticket(request, loop)
        task = loop.create_task(self._run(ticket))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return ticket

    async def _run(self, ticket: Ticket) -> None:
        """vLLM's tokens through mgm's row logic (`Row`: incremental decoding that holds back partial
        UTF-8, stop strings, eos), so the text is what mgm's own worker would send for those tokens."""
        row = Row(self.engine, ticket.request, on_text=ticket.push_text, cancelled=lambda: ticket.cancelled)
        reason = "cancelled"
        try:
            async for piece in self.engine.stream(ticket.request, f"mgm-{ticket.id}-{uuid.uuid4().hex[:8]}"):
                ticket.prompt_tokens = piece.prompt_tokens
                for token in piece.token_ids:
                    row.push(token)
                if row.done:
                    break  # leaving the stream aborts the request in vLLM
                if piece.finish_reason is not None:
                    reason = piece.finish_reason
            row.finish(reason)
            ticket.finish(row.result)
        except Exception as exc:  # the reader re-raises it; the worker answers with an error chunk
            self.logger.exception("vLLM generation failed")
            ticket.finish(error=exc)

    # the controller link as ModelWorker's; no mgm batcher thread
    async def start(self) -> None:
        self._semaphore = asyncio.Semaphore(self.settings.limit_model_concurrency)
        if self.link is not None:
            self.link.start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.link is not None:
            await asyncio.to_thread(self.link.stop)
        self.engine.shutdown()


def engine_args_from(args: argparse.Namespace, settings: WorkerSettings) -> dict[str, Any]:
    """vLLM engine arguments from the parsed flags (ours mapped as the module docstring says)."""
    if settings.load_8bit:
        raise UserError("--load-8bit has no vLLM equivalent; use --quantization (e.g. fp8) or --load-4bit")
    kwargs: dict[str, Any] = dict(
        tensor_parallel_size=args.tensor_parallel_size, pipeline_parallel_size=args.pipeline_parallel_size,
        dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=args.max_num_seqs or settings.batch_size, enforce_eager=args.enforce_eager,
        limit_mm_per_prompt={"image": args.limit_images_per_prompt})
    if args.distributed_executor_backend:
        kwargs["distributed_executor_backend"] = args.distributed_executor_backend
    if args.max_model_len:
        kwargs["max_model_len"] = args.max_model_len
    quantization = args.quantization or ("bitsandbytes" if settings.load_4bit else None)
    if quantization:
        kwargs["quantization"] = quantization
    for item in args.vllm_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--vllm-arg {item!r} must look like KEY=VALUE")
        try:
            kwargs[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.replace("-", "_")] = value
    return kwargs


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # --quantization here is vLLM's method (engine_args_from), not mgm's int8/int4 loader option
    settings = dataclasses.replace(settings_from_args(args), quantization=None)
    engine_args = engine_args_from(args, settings)
    worker_id = uuid.uuid4().hex[:6]
    logger = build_logger(LOGGER_NAME, f"vllm_worker_{worker_id}.log", settings.log_dir)
    worker = VLLMWorker.load_vllm(settings, engine_args, logger, worker_id)
    import uvicorn

    uvicorn.run(create_app(worker), host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
