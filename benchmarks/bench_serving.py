"""Serving benchmark: controller + one model worker on loopback, driven through the OpenAI API.

    python benchmarks/bench_serving.py                      # tiny random model built on the fly, CPU
    python benchmarks/bench_serving.py --model-path PATH --device cuda --max-tokens 128

Starts `python -m mgm.serve.controller` and `python -m mgm.serve.model_worker` as subprocesses on free
127.0.0.1 ports, waits for the worker to register, then for each concurrency level (1, 4, 16 by
default) runs that many clients at once; each client sends `--requests` streaming chat completions
(`stream_options.include_usage`, one small image per request unless `--no-image`) one after another
through the controller's `/v1` (or straight to the worker with `--direct`). Per level it reports time to
first token, tokens/s per client and in total (median over `--repeats` interleaved runs), and p50/p99
latency; at the end the total-tokens/s ratio of the highest level to 1 client (the original worker
serialises requests: about 1x).
Token counts are the server's `usage.completion_tokens`. `--json FILE` also writes the numbers.

Then the hostile-input check: p50/p95 latency of a small request (`--hostile-requests` of them, one
after another) on a quiet server, and again while `--flood-clients` other clients keep sending bad
requests of one kind (`--floods`: a `--bad-mb` MB text prompt; 20,000 stop strings; four 1-bit
8192^2 PNGs; a `--bad-mb` MB body that must be parsed), each refused with a 4xx; per flood the ratio
of the two p95s (target: under 2x), and the worker's peak RSS. `--hostile-only` runs just this part.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def tiny_image_data_url() -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 48), "white")
    ImageDraw.Draw(image).rectangle((8, 8, 40, 32), fill="orange")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass
class RequestStats:
    ttft: float
    latency: float
    tokens: int


@dataclass
class LevelStats:
    concurrency: int
    requests: int
    wall_s: float
    total_tokens: int
    total_tok_s: float
    per_client_tok_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    errors: int = 0
    mean_batch: float = 0.0  # rows per batched generation in the worker during this level
    samples: list[RequestStats] = field(default_factory=list, repr=False)


async def one_request(client, model: str, question: str, image_url: str | None, max_tokens: int) -> RequestStats:
    content: list[dict] = [{"type": "text", "text": question}]
    if image_url:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    start = time.perf_counter()
    ttft = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    latency = time.perf_counter() - start
    return RequestStats(ttft=ttft if ttft is not None else latency, latency=latency, tokens=tokens)


async def run_level(base_url: str, model: str, concurrency: int, requests: int, image_url: str | None,
                    max_tokens: int) -> LevelStats:
    from openai import AsyncOpenAI

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    http_client = httpx.AsyncClient(limits=limits, timeout=300, trust_env=False)
    client = AsyncOpenAI(base_url=base_url, api_key="unused", http_client=http_client, max_retries=0)
    samples: list[RequestStats] = []
    errors = 0

    async def one_client(index: int) -> None:
        nonlocal errors
        for k in range(requests):
            try:
                samples.append(await one_request(client, model, f"Client {index}, question {k}: what is in the image?",
                                                 image_url, max_tokens))
            except Exception as exc:  # counted, reported; the benchmark goes on
                errors += 1
                print(f"  request failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    start = time.perf_counter()
    await asyncio.gather(*(one_client(i) for i in range(concurrency)))
    wall = time.perf_counter() - start
    await http_client.aclose()
    total = sum(s.tokens for s in samples)
    ttfts = [s.ttft * 1000 for s in samples] or [0.0]
    latencies = [s.latency * 1000 for s in samples] or [0.0]
    return LevelStats(concurrency=concurrency, requests=len(samples), wall_s=wall, total_tokens=total,
                      total_tok_s=total / wall, per_client_tok_s=total / wall / concurrency,
                      ttft_p50_ms=percentile(ttfts, 50), ttft_p99_ms=percentile(ttfts, 99),
                      latency_p50_ms=percentile(latencies, 50), latency_p99_ms=percentile(latencies, 99),
                      errors=errors, samples=samples)


FLOODS = ("text", "stops", "images", "bigbody")
FLOOD_STATUS = {"text": 400, "stops": 400, "images": 413, "bigbody": 400}


def flood_body(kind: str, model: str, bad_mb: float) -> bytes:
    """One bad request of `kind` (issue 21's probes):
    text: a `bad_mb` MB prompt far over the context (400 before parsing);
    stops: 20,000 stop strings of 300 characters and one tiny image part, which skips the pre-parse size
        check (6 MB; 400 for too many stop strings);
    images: four 1-bit 8192x8192 PNGs in 42 KB (413 for the pixels per request, from the headers);
    bigbody: a `bad_mb` MB data URL that is not an image, so the body must be parsed (400)."""
    from PIL import Image

    def message(content) -> bytes:
        return json.dumps({"model": model, "max_tokens": 4,
                           "messages": [{"role": "user", "content": content}]}).encode()

    if kind == "text":
        return message("hello " * int(bad_mb * 1024 * 1024 / 6))
    if kind == "stops":
        body = json.loads(message([{"type": "image_url", "image_url": {"url": tiny_image_data_url()}},
                                   {"type": "text", "text": "hi"}]))
        body["stop"] = [f"{k:06d}" + "s" * 294 for k in range(20_000)]
        return json.dumps(body).encode()
    if kind == "images":
        buffer = io.BytesIO()
        Image.new("1", (8192, 8192)).save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        return message([{"type": "image_url", "image_url": {"url": url}} for _ in range(4)]
                       + [{"type": "text", "text": "What are these?"}])
    if kind == "bigbody":
        noise = base64.b64encode(os.urandom(int(bad_mb * 1024 * 1024 * 3 / 4))).decode()
        return message([{"type": "image_url", "image_url": {"url": "data:image/png;base64," + noise}},
                        {"type": "text", "text": "What is it?"}])
    raise ValueError(f"unknown flood {kind!r}; one of {', '.join(FLOODS)}")


def flood_bad_requests(url: str, model: str, kind: str, bad_mb: float, clients: int, active, stop, results) -> None:
    """Other clients, in their own process: while `active` is set, `clients` threads POST a bad request
    of `kind` again and again; at `stop`, put (status codes, milliseconds per request) on `results`."""
    import threading

    body = flood_body(kind, model, bad_mb)
    codes: list[int] = []
    times: list[float] = []

    def client_loop() -> None:
        with httpx.Client(timeout=300, trust_env=False) as client:
            while not stop.is_set():
                if not active.wait(0.05):
                    continue
                t0 = time.perf_counter()
                response = client.post(url, content=body, headers={"content-type": "application/json"})
                times.append((time.perf_counter() - t0) * 1000)
                codes.append(response.status_code)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put((codes, times))


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory (VmHWM, Linux), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def hostile_check(base_url: str, model: str, requests: int, image_url: str | None, max_tokens: int,
                        bad_mb: float, repeats: int, kind: str = "text", clients: int = 1) -> dict[str, float]:
    """p50/p95 latency (ms) of small requests, quiet and while `clients` other clients flood bad requests
    of `kind`; `repeats` quiet/flooded phase pairs, interleaved, so a busy spell of the machine hits both."""
    import multiprocessing

    from openai import AsyncOpenAI

    http_client = httpx.AsyncClient(timeout=300, trust_env=False)
    client = AsyncOpenAI(base_url=base_url, api_key="unused", http_client=http_client, max_retries=0)

    async def small_requests() -> list[float]:
        return [(await one_request(client, model, f"Question {k}: what is in the image?", image_url,
                                   max_tokens)).latency * 1000 for k in range(requests)]

    context = multiprocessing.get_context("spawn")
    active, stop, results = context.Event(), context.Event(), context.Queue()
    flood = context.Process(target=flood_bad_requests, daemon=True, args=(
        base_url + "/chat/completions", model, kind, bad_mb, clients, active, stop, results))
    flood.start()
    quiet: list[float] = []
    loaded: list[float] = []
    for _ in range(repeats):
        quiet += await small_requests()
        active.set()
        await asyncio.sleep(1.0 if quiet[requests:] else 3.0)  # the flood is running (first: its body is built)
        loaded += await small_requests()
        active.clear()
        await asyncio.sleep(0.5)  # the last bad request is answered
    stop.set()
    codes, rejected = await asyncio.to_thread(results.get, True, 300)
    flood.join(30)
    await http_client.aclose()
    if not codes or set(codes) != {FLOOD_STATUS[kind]}:
        raise SystemExit(f"{kind} flood: bad requests were not all refused with {FLOOD_STATUS[kind]}: "
                         f"HTTP {sorted(set(codes))}")
    result = {"flood": kind, "clients": clients, "bad_mb": bad_mb, "requests": len(quiet),
              "bad_requests_refused": len(codes), "bad_request_ms_p50": percentile(rejected, 50),
              "quiet_p50_ms": percentile(quiet, 50), "quiet_p95_ms": percentile(quiet, 95),
              "flooded_p50_ms": percentile(loaded, 50), "flooded_p95_ms": percentile(loaded, 95)}
    result["p95_ratio"] = result["flooded_p95_ms"] / result["quiet_p95_ms"]
    return result


def print_hostile(h: dict[str, Any]) -> None:
    print(f"[{h['flood']}] small requests ({h['requests']} quiet, {h['requests']} flooded), quiet: p50 "
          f"{h['quiet_p50_ms']:.0f} ms, p95 {h['quiet_p95_ms']:.0f} ms; while {h['clients']} other client(s) send "
          f"{h['flood']} bad requests ({h['bad_requests_refused']} refused with {FLOOD_STATUS[h['flood']]}, p50 "
          f"{h['bad_request_ms_p50']:.0f} ms each): p50 "
          f"{h['flooded_p50_ms']:.0f} ms, p95 {h['flooded_p95_ms']:.0f} ms; p95 ratio {h['p95_ratio']:.2f}x "
          f"(target < 2x)")


def worker_batching(worker: str) -> dict[str, int]:
    """The worker's batching counters (from /worker_get_status)."""
    status = httpx.post(worker + "/worker_get_status", timeout=10, trust_env=False).json()
    return status.get("batching", {"batches": 0, "rows": 0, "steps": 0, "row_steps": 0})


def merge_runs(runs: list[LevelStats]) -> LevelStats:
    """One level's repeats: median tokens/s; latency percentiles over every request of every repeat."""
    samples = [s for r in runs for s in r.samples]
    ttfts = [s.ttft * 1000 for s in samples] or [0.0]
    latencies = [s.latency * 1000 for s in samples] or [0.0]
    total_tok_s = statistics.median(r.total_tok_s for r in runs)
    concurrency = runs[0].concurrency
    return LevelStats(concurrency=concurrency, requests=len(samples), wall_s=sum(r.wall_s for r in runs),
                      total_tokens=sum(r.total_tokens for r in runs), total_tok_s=total_tok_s,
                      per_client_tok_s=total_tok_s / concurrency, ttft_p50_ms=percentile(ttfts, 50),
                      ttft_p99_ms=percentile(ttfts, 99), latency_p50_ms=percentile(latencies, 50),
                      latency_p99_ms=percentile(latencies, 99), errors=sum(r.errors for r in runs), samples=samples)


def wait_for_model(controller: str, model: str, procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"a server exited early with status {proc.returncode}; see its log above")
        try:
            if model in httpx.post(controller + "/list_models", timeout=2, trust_env=False).json()["models"]:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"the worker did not register {model} within {timeout:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_serving.py",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", default=None, help="checkpoint folder (default: the tiny zoo's MGM-Tiny-Vicuna, "
                                                      "built in a temporary folder)")
    p.add_argument("--device", default="cpu", help="worker device (default cpu)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="client counts (default 1 4 16)")
    p.add_argument("--requests", type=int, default=4, help="requests per client per level (default 4)")
    p.add_argument("--min-requests", type=int, default=16,
                   help="at least this many requests per level: fewer clients send more each (default 16)")
    p.add_argument("--repeats", type=int, default=3,
                   help="run all levels this many times, interleaved; tokens/s is the median (default 3)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (default 64)")
    p.add_argument("--no-image", action="store_true", help="text-only requests")
    p.add_argument("--direct", action="store_true", help="talk to the worker's /v1 instead of the controller's")
    p.add_argument("--limit-model-concurrency", type=int, default=None,
                   help="worker slots / batch size (default: the highest concurrency level)")
    p.add_argument("--batch-window-ms", type=float, default=20.0, help="worker batching window (default 20)")
    p.add_argument("--batching", choices=("continuous", "window"), default="continuous",
                   help="the worker's batching mode (default continuous)")
    p.add_argument("--chunk-interval-ms", type=float, default=None,
                   help="the worker's --chunk-interval-ms (default: the worker's default)")
    p.add_argument("--worker-threads", type=int, default=1,
                   help="torch CPU threads in the worker (default 1: the tiny model gains nothing from more, and "
                        "OpenMP threads competing with the clients make CPU timings erratic; 0 = torch's default)")
    p.add_argument("--hostile-requests", type=int, default=30,
                   help="small requests per phase of the hostile-input check (default 30; 0 = skip it)")
    p.add_argument("--bad-mb", type=float, default=20.0,
                   help="size of the bad request's prompt in MB (default 20, the size that stalled the original "
                        "worker; the servers' body limit is 64 MiB)")
    p.add_argument("--hostile-only", action="store_true", help="run only the hostile-input check")
    p.add_argument("--floods", nargs="+", choices=FLOODS, default=list(FLOODS),
                   help="bad-request floods of the hostile-input check (default: all): text (a --bad-mb prompt), "
                        "stops (20,000 stop strings), images (four 1-bit 8192^2 PNGs), bigbody (a --bad-mb data "
                        "URL that must be parsed)")
    p.add_argument("--flood-clients", type=int, default=3,
                   help="clients sending bad requests at once during a flood (default 3)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="mgm-bench-") as tmp:
        model_path = args.model_path
        if model_path is None:
            from mgm.zoo.tiny import build_tiny_zoo

            manifest = build_tiny_zoo(Path(tmp) / "model_zoo", families=("vicuna",))
            model_path = manifest["checkpoints"]["MGM-Tiny-Vicuna"]["path"]  # type: ignore[index]
        model = Path(model_path).name
        cport, wport = free_port(), free_port()
        controller, worker = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{wport}"
        slots = args.limit_model_concurrency or max(args.concurrency)
        py = sys.executable
        procs = [subprocess.Popen([py, "-m", "mgm.serve.controller", "--port", str(cport), "--log-dir", tmp], env=env)]
        procs.append(subprocess.Popen(
            [py, "-m", "mgm.serve.model_worker", "--port", str(wport), "--controller", controller, "--worker", worker,
             "--model-path", model_path, "--device", args.device, "--limit-model-concurrency", str(slots),
             "--batch-window-ms", str(args.batch_window_ms), "--batching", args.batching, "--log-dir", tmp]
            + (["--num-threads", str(args.worker_threads)] if args.worker_threads > 0 else [])
            + (["--chunk-interval-ms", str(args.chunk_interval_ms)] if args.chunk_interval_ms is not None else []),
            env=env))
        try:
            wait_for_model(controller, model, procs, timeout=180)
            base = (worker if args.direct else controller) + "/v1"
            image = None if args.no_image else tiny_image_data_url()
            asyncio.run(run_level(base, model, 2, 1, image, args.max_tokens))  # warm-up
            hostile: list[dict[str, Any]] = []
            if args.hostile_requests > 0:
                rss_before = peak_rss_mb(procs[1].pid)
                for kind in args.floods:
                    hostile.append(asyncio.run(hostile_check(base, model, args.hostile_requests, image,
                                                             min(args.max_tokens, 8), args.bad_mb, args.repeats,
                                                             kind, args.flood_clients)))
                    hostile[-1]["worker_peak_rss_mb"] = peak_rss_mb(procs[1].pid)
                    print_hostile(hostile[-1])
                print(f"worker peak RSS: {rss_before:.0f} MB before the floods, "
                      f"{peak_rss_mb(procs[1].pid):.0f} MB after them")
            if args.hostile_only:
                if args.json:
                    Path(args.json).write_text(json.dumps({"model": model, "device": args.device,
                                                           "hostile": hostile}, indent=2))
                return 0 if all(h["p95_ratio"] < 2 for h in hostile) else 1
            print(f"model {model} on {args.device} ({args.worker_threads or 'default'} worker threads, "
                  f"{args.batching} batching); "
                  f"max_tokens {args.max_tokens}; {args.repeats} repeats (median tokens/s); "
                  f"{'direct to the worker' if args.direct else 'through the controller'}; "
                  f"{'text only' if args.no_image else 'one image per request'}")
            runs: dict[int, list[LevelStats]] = {level: [] for level in args.concurrency}
            batching: dict[int, list[int]] = {level: [0, 0] for level in args.concurrency}  # batches, rows
            for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits every level
                for level in args.concurrency:
                    per_client = max(args.requests, -(-args.min_requests // level))
                    before = worker_batching(worker)
                    runs[level].append(asyncio.run(run_level(base, model, level, per_client, image, args.max_tokens)))
                    after = worker_batching(worker)
                    if after.get("steps"):  # continuous batching: mean rows per decoding step
                        batching[level][0] += after["steps"] - before["steps"]
                        batching[level][1] += after["row_steps"] - before["row_steps"]
                    else:  # window batching: mean requests per batched generation
                        batching[level][0] += after["batches"] - before["batches"]
                        batching[level][1] += after["rows"] - before["rows"]
            print(f"{'clients':>7} {'reqs':>5} {'tok':>6} {'total tok/s':>11} {'tok/s/client':>12} "
                  f"{'TTFT p50':>9} {'TTFT p99':>9} {'lat p50':>9} {'lat p99':>9} {'batch':>5} {'errors':>6}")
            results = [merge_runs(runs[level]) for level in args.concurrency]
            for r in results:
                batches, rows = batching[r.concurrency]
                r.mean_batch = rows / batches if batches else 0.0
                print(f"{r.concurrency:>7} {r.requests:>5} {r.total_tokens:>6} {r.total_tok_s:>11.1f} "
                      f"{r.per_client_tok_s:>12.1f} {r.ttft_p50_ms:>7.0f}ms {r.ttft_p99_ms:>7.0f}ms "
                      f"{r.latency_p50_ms:>7.0f}ms {r.latency_p99_ms:>7.0f}ms {r.mean_batch:>5.1f} {r.errors:>6}")
            base_level = next((r for r in results if r.concurrency == 1), None)
            top = max(results, key=lambda r: r.concurrency)
            ratio = top.total_tok_s / base_level.total_tok_s if base_level and base_level.total_tok_s else float("nan")
            print(f"total tokens/s at {top.concurrency} clients vs 1 client: {ratio:.2f}x")
            if args.json:
                Path(args.json).write_text(json.dumps(
                    {"model": model, "device": args.device, "ratio": ratio, "hostile": hostile,
                     "levels": [{k: v for k, v in asdict(r).items() if k != "samples"} for r in results]}, indent=2))
            return 0 if all(r.errors == 0 for r in results) else 1
        finally:
            for proc in reversed(procs):  # the worker first, so its last heart beat finds the controller
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
