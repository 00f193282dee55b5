"""Eval runner benchmark: items/s of the batched runner vs the original one-question-at-a-time loop.

    python benchmarks/bench_eval.py [--images-per-category 8] [--max-new-tokens 16] [--repeats 2]
                                    [--batch-sizes 1,4,16] [--device cpu] [--json OUT]

Builds the tiny model zoo (Vicuna family) and an MME-format question set (llava_mme.jsonl + the MME
tree; 3 categories x N images x 2 questions) in a temporary folder, loads MGM-Tiny-Vicuna once, then
measures in this one run, interleaved so drifting machine load hits every variant alike (best of
--repeats):

* `original loop`: the original runner's algorithm (docs/original.md#evaluation) — per question: template, open the
  image, HR-first preprocessing with the (copied) processor, `tokenizer_image_token`, a batch-1
  `model.generate`, decode;
* `runner bs=K`: `python -m mgm.eval.model_vqa_loader --batch-size K` (in-process, --overwrite).

Every variant must give identical answers (greedy); the target is runner bs=16 >= 4x runner bs=1 items/s.
Exit status 1 when answers differ (or, with --strict, when the speed target is missed).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def original_loop(engine, questions: list[dict], image_folder: str, conv_mode: str, max_new_tokens: int) -> list[str]:
    """The original model_vqa_loader loop, one question at a time (own code, same algorithm)."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from mgm.constants import IMAGE_TOKEN_INDEX
    from mgm.eval.runner import build_prompt
    from mgm.mm_utils import process_images, tokenizer_image_token

    tokenizer, model = engine.tokenizer, engine.model
    processor = copy.deepcopy(engine.image_processor)  # the original mutated the shared processor
    cfg = model.config
    grid = getattr(cfg, "image_grid", 1) or 1
    answers = []
    for line in questions:
        prompt = build_prompt(conv_mode, "<image>\n" + line["text"])
        image = Image.open(os.path.join(image_folder, line["image"])).convert("RGB")
        aux = getattr(cfg, "image_size_aux", None)
        if aux:
            if getattr(processor, "image_size_raw", None) is None:
                processor.image_size_raw = dict(processor.crop_size)
            processor.crop_size = {"height": aux, "width": aux}
            processor.size = {"shortest_edge": aux}
        image_tensor = process_images([image], processor, cfg)[0]
        raw = processor.image_size_raw or processor.crop_size
        image_aux = None
        if aux:
            image_aux = image_tensor
            image_tensor = F.interpolate(image_tensor[None], size=[raw["height"] * grid, raw["width"] * grid],
                                         mode="bilinear", align_corners=False)[0]
        if grid >= 2:
            crops = image_tensor.reshape(3, grid, raw["height"], grid, raw["width"]).permute(1, 3, 0, 2, 4)
            crops = crops.reshape(-1, 3, raw["height"], raw["width"])
            if getattr(cfg, "image_global", False):
                glob = F.interpolate(image_tensor[None], size=[raw["height"], raw["width"]], mode="bilinear",
                                     align_corners=False)
                crops = torch.cat([crops, glob], dim=0)
            image_tensor = crops.contiguous()
        input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
        to_device = dict(device=engine.device, dtype=engine.dtype)
        with torch.inference_mode():
            out = model.generate(
                input_ids.to(engine.device),
                images=image_tensor[None].to(**to_device),
                images_aux=image_aux[None].to(**to_device) if image_aux is not None else None,
                do_sample=False, temperature=None, top_p=None, top_k=None, num_beams=1,
                max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, use_cache=True)
        answers.append(tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip())
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-category", type=int, default=8, help="MME images per category (2 questions each)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repetitions; the best time counts")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when bs=16 is under 4x bs=1")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from mgm.eval import model_vqa_loader
    from mgm.eval.runner import EvalModel
    from mgm.eval.tiny_benchmarks import build_mme
    from mgm.zoo.tiny import build_tiny_zoo

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        root = Path(tmp)
        zoo = build_tiny_zoo(root / "zoo", seed=0, families=["vicuna"])
        model_path = zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]
        build_mme(root / "data", random.Random(0), images_per_category=args.images_per_category)
        qfile = str(root / "data" / "MME" / "llava_mme.jsonl")
        folder = str(root / "data" / "MME" / "MME_Benchmark_release_version")
        questions = [json.loads(line) for line in open(qfile)]
        n = len(questions)
        model = EvalModel.load(argparse.Namespace(model_path=model_path, device=args.device))
        engine = model.engine
        model.set_terminators("vicuna_v1")

        def runner(bs: int):
            out = root / f"answers_bs{bs}.jsonl"

            def go() -> list[str]:
                model_vqa_loader.run(["--model-path", model_path, "--question-file", qfile, "--image-folder", folder,
                                      "--answers-file", str(out), "--conv-mode", "vicuna_v1", "--temperature", "0",
                                      "--max_new_tokens", str(args.max_new_tokens), "--batch-size", str(bs),
                                      "--overwrite", "--no-progress"], model=model)
                return [json.loads(line)["text"] for line in open(out)]
            return go

        variants = {"original loop": lambda: original_loop(engine, questions, folder, "vicuna_v1", args.max_new_tokens)}
        variants.update({f"runner bs={bs}": runner(bs) for bs in batch_sizes})
        answers: dict[str, list[str]] = {}
        best = {k: float("inf") for k in variants}
        for key, fn in variants.items():  # warm-up (and the answers to compare)
            answers[key] = fn()
        for _ in range(args.repeats):
            for key, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                best[key] = min(best[key], time.perf_counter() - t0)

    reference = answers["original loop"]
    same = {k: v == reference for k, v in answers.items()}
    base = n / best["runner bs=1"] if "runner bs=1" in best else None
    rows = []
    print(f"MME-format set: {n} questions, max_new_tokens {args.max_new_tokens}, device {args.device}, "
          f"best of {args.repeats} interleaved runs")
    print(f"{'variant':16s} {'seconds':>8s} {'items/s':>8s} {'vs bs=1':>8s} {'vs orig':>8s}  answers")
    orig_rate = n / best["original loop"]
    for key in variants:
        rate = n / best[key]
        rows.append({"variant": key, "seconds": best[key], "items_per_s": rate,
                     "speedup_vs_bs1": rate / base if base else None, "speedup_vs_original": rate / orig_rate,
                     "identical_answers": same[key]})
        print(f"{key:16s} {best[key]:8.2f} {rate:8.2f} {(rate / base if base else float('nan')):8.2f} "
              f"{rate / orig_rate:8.2f}  {'identical' if same[key] else 'DIFFERENT'}")
    target = None
    if "runner bs=16" in best and base:
        target = (n / best["runner bs=16"]) / base
        print(f"target bs=16 >= 4x bs=1: {target:.2f}x -> {'met' if target >= 4 else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"questions": n, "max_new_tokens": args.max_new_tokens,
                                               "rows": rows, "bs16_vs_bs1": target}, indent=2))
    if not all(same.values()):
        print("error: batched answers differ from the one-at-a-time answers", file=sys.stderr)
        return 1
    return 1 if args.strict and target is not None and target < 4 else 0


if __name__ == "__main__":
    raise SystemExit(main())
