"""The vLLM worker's command line (`python -m mgm.serve.vllm_worker --help`): the model worker's flags
plus the vLLM engine's most used ones.

Kept apart from the worker so that `--help` and flag errors answer without loading torch or vLLM.
"""
from __future__ import annotations

import argparse

from mgm.program import program_name
from mgm.serve.worker_settings import build_parser as worker_parser


def build_parser() -> argparse.ArgumentParser:
    """model_worker's flags plus the vLLM engine's most used ones (names as `vllm serve` spells them)."""
    p = worker_parser(engine_quantization=False)  # --quantization below is vLLM's
    p.prog = program_name("python -m mgm.serve.vllm_worker")
    p.description = ("Serve one MGM model on vLLM behind mgm's worker protocol and /v1 (registers with the "
                     "controller like mgm.serve.model_worker). Needs the vLLM environment.")
    g = p.add_argument_group("vLLM engine")
    g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, help="GPUs to shard the LLM over")
    g.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1, help="pipeline stages (nodes or GPUs)")
    g.add_argument("--distributed-executor-backend", choices=("mp", "ray"), default=None,
                   help="mp (one node) or ray (several nodes; start a Ray cluster first)")
    g.add_argument("--dtype", default="auto", help="auto (checkpoint dtype), bfloat16, float16, float32")
    g.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="share of GPU memory vLLM may use")
    g.add_argument("--max-num-seqs", type=int, default=None,
                   help="sequences vLLM schedules at once (default: --max-batch-size or --limit-model-concurrency)")
    g.add_argument("--quantization", default=None, help="vLLM quantisation method (e.g. awq, fp8, bitsandbytes)")
    g.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs / torch.compile")
    g.add_argument("--limit-images-per-prompt", type=int, default=4, help="most images in one request (default 4)")
    g.add_argument("--vllm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any other vLLM engine argument (python name, JSON value), e.g. enable_prefix_caching=true")
    return p
