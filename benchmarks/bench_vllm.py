"""vLLM worker vs mgm's own worker on the same checkpoint, in one run: tokens/s and time to first token.

    python benchmarks/bench_vllm.py                        # tiny head_dim-32 checkpoint built on the fly, CPU
    python benchmarks/bench_vllm.py --model-path PATH --max-tokens 128 --vllm-arg gpu_memory_utilization=0.8

Run it with the vLLM environment's python (scripts/setup_vllm_venv.sh). Starts a controller, then
`mgm.serve.model_worker` (mgm's engine, continuous batching) and afterwards `mgm.serve.vllm_worker`
(vLLM) as subprocesses on the same checkpoint, one at a time so they never share the machine, and
drives each with bench_serving's client: for each concurrency level (1 and 16 by default) that many
clients send streaming `/v1/chat/completions` (one image each, greedy) straight to the worker.
Reports per engine and level total tokens/s, tokens/s per client, TTFT p50/p99, latency p50, and the
vLLM/mgm ratios of total tokens/s and TTFT p50. Token counts are each server's `usage`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import free_port, merge_runs, run_level, tiny_image_data_url, wait_for_model  # noqa: E402

ENGINES = ("mgm", "vllm")


def served_name(engine: str, model_path: str) -> str:
    return f"{Path(model_path).name}-{engine}"


def worker_command(engine: str, args: argparse.Namespace, model_path: str, port: int, controller: str,
                   log_dir: str) -> list[str]:
    common = ["--port", str(port), "--controller", controller, "--worker", f"http://127.0.0.1:{port}",
              "--model-path", model_path, "--model-name", served_name(engine, model_path), "--limit-model-concurrency", str(max(args.concurrency)),
              "--log-dir", log_dir]
    if args.threads:
        common += ["--num-threads", str(args.threads)]
    if engine == "mgm":
        return [sys.executable, "-m", "mgm.serve.model_worker", *common, "--device", args.device]
    extra = [x for item in args.vllm_arg for x in ("--vllm-arg", item)]
    return [sys.executable, "-m", "mgm.serve.vllm_worker", *common, "--dtype", args.dtype, "--enforce-eager", *extra]


def measure(engine: str, args: argparse.Namespace, model_path: str, controller: str, tmp: str, env: dict) -> list:
    port = free_port()
    proc = subprocess.Popen(worker_command(engine, args, model_path, port, controller, tmp), env=env)
    model = served_name(engine, model_path)  # one name per engine: the controller still lists the first one
    try:
        wait_for_model(controller, model, [proc], timeout=args.start_timeout)
        base = f"http://127.0.0.1:{port}/v1"
        image = tiny_image_data_url()
        asyncio.run(run_level(base, model, 2, 1, image, args.max_tokens))  # warm-up
        runs: dict[int, list] = {level: [] for level in args.concurrency}
        for _ in range(args.repeats):
            for level in args.concurrency:
                per_client = max(args.requests, -(-args.min_requests // level))
                runs[level].append(asyncio.run(run_level(base, model, level, per_client, image, args.max_tokens)))
        return [merge_runs(runs[level]) for level in args.concurrency]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_vllm.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", default=None, help="MGM checkpoint (default: a tiny one built in a temp folder)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="clients at once (default 1 16)")
    p.add_argument("--requests", type=int, default=1, help="requests per client per level (default 1)")
    p.add_argument("--min-requests", type=int, default=16, help="at least this many requests per level (default 16)")
    p.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request (default 32)")
    p.add_argument("--repeats", type=int, default=1, help="runs per level (median tokens/s; default 1)")
    p.add_argument("--device", default="auto", help="mgm worker device (default auto)")
    p.add_argument("--dtype", default="float32", help="vLLM dtype (default float32, what mgm uses on CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (default: torch's choice)")
    p.add_argument("--vllm-arg", action="append", default=[], metavar="KEY=VALUE", help="more vLLM engine args")
    p.add_argument("--start-timeout", type=float, default=300, help="seconds a worker may take to register")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with tempfile.TemporaryDirectory(prefix="mgm-bench-vllm-") as tmp:
        model_path = args.model_path
        if model_path is None:
            from mgm.integrations.vllm.tiny_zoo import build_vllm_zoo

            model_path = build_vllm_zoo(Path(tmp) / "zoo", ["MGM-Tiny-Vicuna-H32"])["MGM-Tiny-Vicuna-H32"]
        cport = free_port()
        controller = f"http://127.0.0.1:{cport}"
        ctrl = subprocess.Popen([sys.executable, "-m", "mgm.serve.controller", "--port", str(cport), "--log-dir", tmp],
                                env=env)
        try:
            results = {engine: measure(engine, args, model_path, controller, tmp, env) for engine in ENGINES}
        finally:
            ctrl.terminate()
            ctrl.wait(timeout=15)
    print(f"model {Path(model_path).name}; max_tokens {args.max_tokens}; one image per request; "
          f"{args.repeats} repeat(s); vLLM dtype {args.dtype}")
    print(f"{'engine':>6} {'clients':>7} {'reqs':>5} {'tok':>6} {'total tok/s':>11} {'tok/s/client':>12} "
          f"{'TTFT p50':>9} {'TTFT p99':>9} {'lat p50':>9} {'errors':>6}")
    for engine in ENGINES:
        for r in results[engine]:
            print(f"{engine:>6} {r.concurrency:>7} {r.requests:>5} {r.total_tokens:>6} {r.total_tok_s:>11.1f} "
                  f"{r.per_client_tok_s:>12.1f} {r.ttft_p50_ms:>7.0f}ms {r.ttft_p99_ms:>7.0f}ms "
                  f"{r.latency_p50_ms:>7.0f}ms {r.errors:>6}")
    ratios = []
    for ours, theirs in zip(results["mgm"], results["vllm"]):
        tok = theirs.total_tok_s / ours.total_tok_s if ours.total_tok_s else float("nan")
        ttft = theirs.ttft_p50_ms / ours.ttft_p50_ms if ours.ttft_p50_ms else float("nan")
        ratios.append({"clients": ours.concurrency, "tok_s_vllm_over_mgm": tok, "ttft_vllm_over_mgm": ttft})
        print(f"{ours.concurrency} clients: vLLM/mgm total tokens/s {tok:.2f}x, TTFT p50 {ttft:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": model_path, "ratios": ratios,
            "levels": {e: [{k: v for k, v in asdict(r).items() if k != "samples"} for r in results[e]]
                       for e in ENGINES}}, indent=2))
    return 0 if all(r.errors == 0 for e in ENGINES for r in results[e]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
