"""Weight-only int8 / int4 LLM decoding against float32, in one run (`mgm.model.quantize`).

A Llama with real layer widths (default: Llama-2-7B's 4096 hidden / 11008 MLP / 32 heads and its 32000-token
vocabulary, 2 layers so that float32 fits a small machine; random weights, seeded) decodes greedily through
HF `generate` three times in one process: float32 (the baseline), int8 and int4 (`quantize_llm`, LM head int8).
The same driver runs all three, so the ratios isolate the weight format. Reported per scheme:
  decode_ms_per_token   median over repeats, from the first generated token to the last
  ratio                 decode time / float32's
  weight_bytes_ratio    bytes of the LLM's weights (parameters + quantised buffers) / float32's
  rss_ratio             resident memory after quantising and dropping float32, in a fresh process each
                        (quantising at load needs float32 once: the peak is float32's, see the closing note)
  logits_rel_err        relative error of the prompt's last logits against float32
  greedy_agreement      share of the greedy tokens equal to float32's over the prompt set
`--quick` runs a 256-wide model (a smoke run). Prints the CPU, its ISA flags and threads.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

HERE = str(Path(__file__).resolve().parent)
sys.path.insert(0, HERE)  # bench_inference beside this file
SHAPES = {"real": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000),
          "quick": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, vocab_size=1024)}
SCHEMES = ("float32", "int8", "int4")


def build(shape: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape], max_position_embeddings=2048)).eval()
    with torch.no_grad():  # trained-like scales: keep activations O(1) through the layers
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    return model


def quantised(model, scheme: str):
    from mgm.model.quantize import quantize_llm

    if scheme != "float32":
        quantize_llm(model, scheme, skip=("model.embed_tokens",))
    return model


def weight_bytes(model) -> int:
    skip = {id(model.get_input_embeddings().weight)}
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if id(t) not in skip and t.dim() >= 1]
    return sum(t.numel() * t.element_size() for t in tensors if t.numel() > 4096)


def prompts(vocab: int, count: int = 4, length: int = 48) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(3, vocab, (1, length), generator=gen) for _ in range(count)]


def decode(model, ids: torch.Tensor, steps: int) -> tuple[list[int], float]:
    from bench_inference import clock  # the same per-token timer as the inference benchmark

    timer = clock()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, min_new_tokens=steps,
                         do_sample=False, pad_token_id=0, streamer=timer)
    return out[0, ids.shape[1]:].tolist(), (timer.times[-1] - timer.times[1]) / (steps - 1)


def rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def resident(shape: str, scheme: str) -> float:
    """RSS (MiB) of a fresh process holding only `scheme`'s model (float32 built, quantised, then freed)."""
    code = (f"import gc, sys; sys.path.insert(0, {HERE!r}); import bench_quant as b; "
            f"m = b.quantised(b.build({shape!r}), {scheme!r}); gc.collect(); print(b.rss_mib())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def bench(shape: str, steps: int, repeats: int) -> dict:
    from mgm.model import cpu_probe

    base = build(shape)
    sets = prompts(base.config.vocab_size)
    out: dict = {"shape": shape, "llm": SHAPES[shape], "threads": torch.get_num_threads(), "cpu": cpu_probe.describe()}
    ref_tokens, ref_logits, ref_bytes, ref_rss = None, None, None, None
    for scheme in SCHEMES:
        model = quantised(copy.deepcopy(base), scheme)
        with torch.no_grad():
            logits = model(input_ids=sets[0]).logits[0, -1].float()
            decode(model, sets[0], 3)  # warm-up
            times = [decode(model, sets[0], steps)[1] for _ in range(repeats)]
            tokens = [decode(model, ids, 16)[0] for ids in sets]
        row = {"decode_ms_per_token": 1e3 * statistics.median(times), "weight_bytes": weight_bytes(model),
               "rss_mib": resident(shape, scheme)}
        if scheme == "float32":
            ref_tokens, ref_logits, ref_bytes, ref_rss = tokens, logits, row["weight_bytes"], row["rss_mib"]
            ref_ms = row["decode_ms_per_token"]
        flat = [a == b for ours, theirs in zip(tokens, ref_tokens) for a, b in zip(ours, theirs)]
        row.update(ratio=row["decode_ms_per_token"] / ref_ms, weight_bytes_ratio=row["weight_bytes"] / ref_bytes,
                   rss_ratio=row["rss_mib"] / ref_rss,
                   logits_rel_err=float((logits - ref_logits).norm() / ref_logits.norm()),
                   greedy_agreement=sum(flat) / len(flat))
        out[scheme] = row
        print(f"[bench_quant] {scheme}: {json.dumps(row)}", file=sys.stderr, flush=True)
        del model
        gc.collect()
    return out


TARGETS = {"int8": 0.4, "int4": 0.3}


def print_report(result: dict) -> None:
    print(f"== {result['shape']} LLM {result['llm']} ({result['threads']} threads; HF generate, medians) ==")
    print(f"  cpu      {result['cpu']}")
    for scheme in SCHEMES:
        row = result[scheme]
        target = TARGETS.get(scheme)
        verdict = "" if target is None else f"  [decode target <= {target}x: {'OK' if row['ratio'] <= target else 'MISSED'}]"
        print(f"  {scheme:8s} " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in row.items()) + verdict)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a 256-wide model, one repeat: a smoke test")
    p.add_argument("--steps", type=int, default=24, help="decoding steps per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per scheme (median reported)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(argv)
    shape, steps, repeats = ("quick", 6, 1) if args.quick else ("real", args.steps, args.repeats)
    result = bench(shape, steps, repeats)
    print(json.dumps(result) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        print_report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
