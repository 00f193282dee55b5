"""Multi-turn chat with and without mgm's caches (image features by content, KV prefix reuse), in one run.

    python benchmarks/bench_multiturn.py [--quick] [--variants base,hd] [--max-tokens 16] [--json FILE]

Model: the released vision shapes with random weights (CLIP ViT-L/14-336 + ConvNeXt-L at 768; HD: 2x2
crops and the global view, ConvNeXt at 1536) and bench_inference's small Llama and word tokenizer
(`--quick`: tiny shapes, a smoke test whose numbers mean nothing). For each variant and for caches off
(the baseline) then on, a fresh engine serves:

  v1    a 4-turn chat about one image through the model worker's `/v1/chat/completions` (in-process
        uvicorn, streaming, the whole history and the image resent each turn, as OpenAI clients do),
        then a new conversation about the same image (another first question);
  cli   the same through `InferenceEngine.stream` with the conversation `mgm chat` keeps.

Reports time to first token (TTFT) per turn, the ratios turn 2-4 / turn 1 and new conversation / cold
request (turn 1 of the caches-on run), whether every answer equals the caches-off answer, the peak
resident memory of each run (its growth with caches on vs off, against the configured cache bounds)
and the caches' counters. Greedy decoding; timings are one run each on whatever CPU runs it.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import build_model, peak_rss_mib, word_tokenizer  # noqa: E402

QUESTIONS = ["w11 w12 w13 describe", "w21 w22 more", "w31 w32 w33 colours", "w41 why"]
NEW_QUESTION = "w51 w52 w53 other"


def make_image(side: int):
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    return Image.fromarray(rng.randint(0, 255, (side * 3 // 4, side, 3), dtype=np.uint8))


def data_url(image) -> str:
    import base64

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def build_engine(model, tokenizer, processor, caches: bool, image_mb: int, prefix_mb: int):
    from mgm.inference import InferenceEngine

    engine = InferenceEngine(tokenizer, model, processor, 4096)
    if caches:
        engine.use_caches(image_mb << 20, prefix_mb << 20)
    return engine


def serve(engine, image_mb: int, prefix_mb: int):
    """A model worker around `engine` on a free 127.0.0.1 port (uvicorn in a thread, not registered),
    with these cache flags (both 0: the caches off, as `--no-prefix-cache --image-cache-mb 0`)."""
    import socket
    import threading

    import uvicorn

    from mgm.serve.model_worker import ModelWorker, WorkerSettings, create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = WorkerSettings(model_path="(in memory)", model_name="bench", port=port, no_register=True,
                              worker_address=f"http://127.0.0.1:{port}", max_image_pixels=4096 * 4096,
                              max_image_bytes=64 << 20, max_body_bytes=128 << 20, image_cache_mb=image_mb,
                              prefix_cache_mb=prefix_mb, no_prefix_cache=prefix_mb == 0)
    worker = ModelWorker(settings, engine, model_name="bench", conv_mode="vicuna_v1")
    server = uvicorn.Server(uvicorn.Config(create_app(worker), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the worker did not start")
        time.sleep(0.05)
    return worker, server, thread


def chat_v1(engine, image, max_tokens: int, image_mb: int, prefix_mb: int) -> dict:
    """4 turns plus a new conversation through the worker's /v1 (streaming): TTFT and answers."""
    import httpx

    worker, server, thread = serve(engine, image_mb, prefix_mb)
    url = data_url(image)

    def ask(messages) -> tuple[float, str]:
        body = {"model": worker.model_name, "messages": messages, "temperature": 0, "max_tokens": max_tokens,
                "stream": True}
        start, first, text = time.perf_counter(), None, ""
        with httpx.stream("POST", worker.worker_address + "/v1/chat/completions", json=body, trust_env=False,
                          timeout=1800) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "choices" not in chunk:
                    raise RuntimeError(f"the worker answered {chunk}")
                delta = chunk["choices"][0]["delta"].get("content") or ""
                if delta and first is None:
                    first = time.perf_counter() - start
                text += delta
        return first if first is not None else time.perf_counter() - start, text

    try:
        ttft, answers, messages = [], [], []
        for turn, question in enumerate(QUESTIONS):
            content: list = [{"type": "text", "text": question}]
            if turn == 0:
                content.append({"type": "image_url", "image_url": {"url": url}})
            messages.append({"role": "user", "content": content})
            t, text = ask(messages)
            ttft.append(t)
            answers.append(text)
            messages.append({"role": "assistant", "content": text})
        t, text = ask([{"role": "user", "content": [{"type": "text", "text": NEW_QUESTION},
                                                    {"type": "image_url", "image_url": {"url": url}}]}])
        return {"ttft": ttft, "new_conversation": t, "answers": answers + [text]}
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def chat_cli(engine, image, max_tokens: int, image_mb: int, prefix_mb: int) -> dict:
    """The same through `engine.stream` and the conversation `mgm chat` keeps."""
    from mgm.conversation import conv_templates
    from mgm.inference import GenerationParams, Request

    def run(questions) -> tuple[list[float], list[str]]:
        conv = conv_templates["vicuna_v1"].copy()
        params = GenerationParams(temperature=0, max_new_tokens=max_tokens, stop=[s for s in conv.stop_strings() if s])
        ttft, answers = [], []
        for turn, question in enumerate(questions):
            conv.append_message(conv.roles[0], ("<image>\n" if turn == 0 else "") + question)
            conv.append_message(conv.roles[1], None)
            start, first, pieces = time.perf_counter(), None, []
            for piece in engine.stream(Request(conv.get_prompt(), [image], params)):
                if piece and first is None:
                    first = time.perf_counter() - start
                pieces.append(piece)
            ttft.append(first if first is not None else time.perf_counter() - start)
            answers.append("".join(pieces).strip())
            conv.messages[-1][-1] = answers[-1]
        return ttft, answers

    ttft, answers = run(QUESTIONS)
    new_ttft, new_answers = run([NEW_QUESTION])
    return {"ttft": ttft, "new_conversation": new_ttft[0], "answers": answers + new_answers}


def run_variant(model, tokenizer, processor, image, args) -> dict:
    from mgm.inference import GenerationParams, Request

    # warm-up on another image, so no run's first turn pays one-time costs (allocations, kernel choice)
    warm = build_engine(model, tokenizer, processor, False, 0, 0)
    "".join(warm.stream(Request("<image>\nw9", [make_image(image.size[0] // 2)], GenerationParams(0, max_new_tokens=2))))
    out: dict = {}
    for label, caches in (("off", False), ("on", True)):
        result: dict = {}

        def both(result: dict = result, caches: bool = caches, label: str = label) -> None:
            image_mb, prefix_mb = (args.image_cache_mb, args.prefix_cache_mb) if caches else (0, 0)
            for path, fn in (("v1", chat_v1), ("cli", chat_cli)):
                if path not in args.paths.split(","):
                    continue
                engine = build_engine(model, tokenizer, processor, caches, image_mb, prefix_mb)
                result[path] = fn(engine, image, args.max_tokens, image_mb, prefix_mb)
                assert (engine.caches is not None) == caches, "the caches-off baseline must run without caches"
                result[path]["caches"] = engine.caches.stats() if engine.caches is not None else None
                progress(f"{label} {path}", result[path]["ttft"] + [result[path]["new_conversation"]])

        result["peak_rss_mib"], result["rss_growth_mib"] = peak_rss_mib(both)
        out[label] = result
    for path in args.paths.split(","):
        on, off = out["on"][path], out["off"][path]
        out[path] = {
            "turns_2_4_over_turn_1": [t / on["ttft"][0] for t in on["ttft"][1:]],
            "new_conversation_over_cold": on["new_conversation"] / on["ttft"][0],
            "baseline_turns_2_4_over_turn_1": [t / off["ttft"][0] for t in off["ttft"][1:]],
            "turn_2_speedup_vs_off": off["ttft"][1] / on["ttft"][1],
            "identical_tokens": on["answers"] == off["answers"],
        }
    out["peak_rss_on_minus_off_mib"] = out["on"]["peak_rss_mib"] - out["off"]["peak_rss_mib"]
    out["cache_bound_mib"] = args.image_cache_mb + args.prefix_cache_mb
    return out


def progress(what: str, values) -> None:
    print(f"  {what}: " + " ".join(f"{v:.2f}s" for v in values), file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_multiturn.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test; numbers mean nothing)")
    p.add_argument("--variants", default="base,hd", help="base, hd or both (default base,hd)")
    p.add_argument("--paths", default="v1,cli", help="v1, cli or both (default v1,cli)")
    p.add_argument("--max-tokens", type=int, default=16, help="new tokens per answer (default 16)")
    p.add_argument("--image-cache-mb", type=int, default=256, help="image-feature cache bound (default 256)")
    p.add_argument("--prefix-cache-mb", type=int, default=1024, help="KV prefix cache bound (default 1024)")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    from mgm.data.image import ImageProcessor
    from mgm.model import cpu_probe
    from mgm.model.fast_linear import use_fast_linears

    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model, spec = build_model("tiny" if args.quick else "real", Path(tmp))
    use_fast_linears(model)  # what load_pretrained_model does on CPU
    side = spec["clip"]["image_size"]
    processor = ImageProcessor.for_image_size(side)
    tokenizer = word_tokenizer(spec["llm"]["vocab_size"])
    image = make_image(4 * side)
    inner = model.get_model()
    base = inner.mgm_settings
    results: dict = {"config": "tiny" if args.quick else "real", "cpu": cpu_probe.describe(),
                     "threads": torch.get_num_threads(), "max_tokens": args.max_tokens}
    for variant in args.variants.split(","):
        print(f"{variant}:", file=sys.stderr, flush=True)
        inner.mgm_settings = base if variant == "base" else dataclasses.replace(
            base, image_grid=2, image_global=True, image_size_aux=2 * spec["image_size_aux"])
        results[variant] = run_variant(model, tokenizer, processor, image, args)
    inner.mgm_settings = base
    print(f"config {results['config']}; {results['threads']} threads; CPU {results['cpu']}; "
          f"max_tokens {args.max_tokens}; one run each")
    print(f"{'variant':>7} {'path':>4} {'caches':>6} {'TTFT t1..t4 (s)':>30} {'new conv':>9}")
    for variant in args.variants.split(","):
        r = results[variant]
        for path in args.paths.split(","):
            for label in ("off", "on"):
                run = r[label][path]
                print(f"{variant:>7} {path:>4} {label:>6} {' '.join(f'{t:7.2f}' for t in run['ttft']):>30} "
                      f"{run['new_conversation']:>9.2f}")
            x = r[path]
            print(f"{'':>7} {path:>4} turns 2-4 / turn 1 with caches: "
                  f"{' '.join(f'{v:.3f}' for v in x['turns_2_4_over_turn_1'])} (off: "
                  f"{' '.join(f'{v:.2f}' for v in x['baseline_turns_2_4_over_turn_1'])}); new conversation / cold: "
                  f"{x['new_conversation_over_cold']:.3f}; turn 2 {x['turn_2_speedup_vs_off']:.1f}x faster than off; "
                  f"identical tokens: {x['identical_tokens']}")
        print(f"{'':>7} peak RSS off {r['off']['peak_rss_mib']:.0f} MiB, on {r['on']['peak_rss_mib']:.0f} MiB "
              f"(+{r['peak_rss_on_minus_off_mib']:.0f} MiB; bounds {r['cache_bound_mib']} MiB); "
              f"caches after the on run: {json.dumps({p: r['on'][p]['caches'] for p in args.paths.split(',')})}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    ok = all(results[v][p]["identical_tokens"] for v in args.variants.split(",") for p in args.paths.split(","))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
