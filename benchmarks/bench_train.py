"""Training benchmark: samples/s, peak memory and where step time goes, stage 1 vs stage 2.

    python benchmarks/bench_train.py [--steps 20] [--batch 4] [--workers 2] [--workdir DIR] [--json]

A small MGM keeps the real shape ratios: an 8x8 LR token grid from a CLIP ViT (hidden 192, 4 layers,
112 px / patch 14), a ConvNeXt (dims 32/64/128/256, depths 1/1/3/1) at 256 px whose stage-0 map gives
each LR token an 8x8 HR window as in the released 336/768 models, and a Llama LLM (hidden 384, 4 layers).
Data: 64 JPEG images (480x360) with two-turn conversations, read and preprocessed by the training dataset
in `--workers` DataLoader workers. Both stages run the training code path (`build_training_setup`,
`LazySupervisedDataset`, the collator, the model's forward/loss) in a fresh process each, with AdamW over
the stage's trainable parameters.

Reported per stage: samples/s after a warm-up; the share of step time spent waiting for data, in the
vision towers, in patch-info mining, in the projector, in the LLM forward, in backward and in the optimizer;
the activation memory kept for backward in one step (bytes of the tensors autograd saves, parameters
excluded); and the process's peak RSS. Targets (issue "Training"): data waiting < 5 % of step time with 2
workers; stage-1 activation memory < half of stage 2's at the same batch.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLIP = dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768, image_size=112,
            patch_size=14, projection_dim=64)
CONVNEXT = dict(depths=(1, 1, 3, 1), dims=(32, 64, 128, 256), embed_dim=64, image_size=256)
IMAGE_SIZE_AUX = 256
LLM = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=6,
           num_key_value_heads=6, max_position_embeddings=1024)


# ---------------------------------------------------------------------------------------------------
# building the small model zoo and data


def build_assets(workdir: Path) -> dict:
    """Towers, LLM (with the tiny Vicuna tokenizer) and data under `workdir` (reused when present)."""
    marker = workdir / "assets.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mgm.zoo.tiny import build_tiny_zoo
    from mgm.zoo.towers import ClipTowerSpec, ConvNextTowerSpec, build_clip_tower, build_convnext_tower

    zoo = build_tiny_zoo(workdir / "tiny_zoo", seed=0, families=["vicuna"])
    clip = build_clip_tower(workdir / "clip", seed=0, spec=ClipTowerSpec(**CLIP))
    convnext = build_convnext_tower(workdir / "convnext", seed=0, spec=ConvNextTowerSpec(**CONVNEXT))
    llm_dir = workdir / "llm"
    llm_dir.mkdir(parents=True, exist_ok=True)
    base = json.loads((Path(zoo["llms"]["vicuna"]) / "config.json").read_text())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=base["vocab_size"], bos_token_id=base["bos_token_id"],
                         eos_token_id=base["eos_token_id"], pad_token_id=base.get("pad_token_id"), **LLM)
    LlamaForCausalLM(config).save_pretrained(str(llm_dir))
    for file in Path(zoo["llms"]["vicuna"]).iterdir():
        if "token" in file.name:
            shutil.copy(file, llm_dir / file.name)
    data = workdir / "data"
    write_data(data, n=64)
    assets = {"clip": str(clip), "convnext": str(convnext), "llm": str(llm_dir), "data": str(data)}
    marker.write_text(json.dumps(assets))
    return assets


def write_data(root: Path, n: int) -> None:
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    stage1, stage2 = [], []
    for i in range(n):
        image = Image.new("RGB", (480, 360), tuple(rng.randrange(256) for _ in range(3)))
        pen = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = rng.randrange(440), rng.randrange(320)
            pen.ellipse([x, y, x + rng.randrange(10, 120), y + rng.randrange(10, 120)],
                        fill=tuple(rng.randrange(256) for _ in range(3)))
        name = f"images/{i:04d}.jpg"
        image.save(root / name, quality=90)
        words = " ".join(rng.choice(["red", "blue", "round", "small", "large", "left", "right", "shape"])
                         for _ in range(rng.randrange(10, 30)))
        stage1.append({"id": i, "image": name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the picture."}, {"from": "gpt", "value": words}]})
        stage2.append({"id": i, "image": name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the shapes in the picture."},
            {"from": "gpt", "value": words},
            {"from": "human", "value": "Which one is the largest?"},
            {"from": "gpt", "value": "the " + words.split()[0] + " one"}]})
    (root / "stage1.json").write_text(json.dumps(stage1))
    (root / "stage2.json").write_text(json.dumps(stage2))


# ---------------------------------------------------------------------------------------------------
# one stage, measured in this process


def _flags(assets: dict, stage: int, batch: int, workers: int, out: Path) -> list[str]:
    flags = ["--model_name_or_path", assets["llm"], "--vision_tower", assets["clip"],
             "--vision_tower_aux", assets["convnext"], "--mm_projector_type", "mlp2x_gelu",
             "--mm_vision_select_layer", "-2", "--mm_use_im_patch_token", "False",
             "--image_size_aux", str(IMAGE_SIZE_AUX), "--data_path", str(Path(assets["data"]) / f"stage{stage}.json"),
             "--image_folder", assets["data"], "--output_dir", str(out), "--report_to", "none",
             "--model_max_length", "512", "--per_device_train_batch_size", str(batch),
             "--dataloader_num_workers", str(workers), "--learning_rate", "1e-4"]
    if stage == 1:
        flags += ["--version", "plain", "--tune_mm_mlp_adapter", "True"]
    else:
        flags += ["--version", "v1", "--image_aspect_ratio", "pad"]
    return flags


class SectionTimer:
    """Wall time inside modules (forward only), accumulated per section via pre/post hooks; `current` is
    the innermost section running now (used to attribute saved activations)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._start: dict[int, float] = {}
        self.stack: list[str] = []

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else "other"

    def attach(self, module, section: str) -> None:
        def pre(mod, args):
            self._start[id(mod)] = time.perf_counter()
            self.stack.append(section)

        def post(mod, args, output):
            self.stack.pop()
            self.totals[section] = self.totals.get(section, 0.0) + time.perf_counter() - self._start.pop(id(mod))

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def wrap(self, owner, name: str, section: str) -> None:
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            self.stack.append(section)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stack.pop()
                self.totals[section] = self.totals.get(section, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)

    def reset(self) -> None:
        self.totals = {}


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def activation_bytes(model, batch, timer: SectionTimer) -> dict[str, int]:
    """Bytes of the tensors autograd keeps for backward in one forward (parameters and repeats excluded),
    by the section that saved them, plus "total"."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    out: dict[str, int] = {"total": 0}

    def pack(tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            out["total"] += storage.nbytes()
            out[timer.current] = out.get(timer.current, 0) + storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    del loss
    return out


def run_stage(assets: dict, stage: int, steps: int, warmup: int, batch_size: int, workers: int,
              checkpointing: bool = False) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from mgm.data.collator import DataCollatorForSupervisedDataset
    from mgm.data.dataset import DataConfig, LazySupervisedDataset
    from mgm.train.args import parse_args
    from mgm.train.model_init import build_training_setup

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        model_args, data_args, training_args = parse_args(_flags(assets, stage, batch_size, workers, Path(tmp)))
    training_args.gradient_checkpointing = checkpointing
    torch.manual_seed(0)
    setup = build_training_setup(model_args, data_args, training_args)
    model = setup.model
    if checkpointing:  # as the Trainer does for --gradient_checkpointing True
        model.gradient_checkpointing_enable()
    s = model.mgm_settings
    config = DataConfig(template_name=setup.template_name, model_max_length=512, image_folder=assets["data"],
                        image_processor=setup.image_processor, image_aspect_ratio=data_args.image_aspect_ratio,
                        image_size_aux=s.image_size_aux, image_grid=s.image_grid, image_global=s.image_global)
    dataset = LazySupervisedDataset(data_args.data_path, setup.tokenizer, config)
    collator = DataCollatorForSupervisedDataset(setup.tokenizer, 512)

    # Synchronous cost of one batch (what the workers must hide).
    t0 = time.perf_counter()
    for i in range(3):
        collator([dataset[(i * batch_size + k) % len(dataset)] for k in range(batch_size)])
    load_per_batch = (time.perf_counter() - t0) / 3

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collator, num_workers=workers,
                        persistent_workers=workers > 0, drop_last=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    inner = model.get_model()
    timer = SectionTimer()
    timer.attach(inner.vision_tower, "vision_towers")
    timer.attach(inner.vision_tower_aux, "vision_towers")
    timer.attach(inner.mm_projector, "projector")
    timer.wrap(model, "unified_resampler", "mining")
    for module in (inner.embed_tokens, *inner.layers, inner.norm, model.lm_head):
        timer.attach(module, "llm_forward")
    model.train()

    def batches():
        while True:
            yield from loader

    stream = batches()
    first = next(stream)
    act = activation_bytes(model, first, timer)
    # The same batch for both stages (stage-2 data, v1 template): only the trainable set differs.
    common_config = DataConfig(**{**config.__dict__, "template_name": "v1"})
    common = LazySupervisedDataset(Path(assets["data"]) / "stage2.json", setup.tokenizer, common_config)
    act_common = activation_bytes(model, collator([common[i] for i in range(batch_size)]), timer)
    model.zero_grad(set_to_none=True)

    parts = {"data_wait": 0.0, "backward": 0.0, "optimizer": 0.0, "step": 0.0}
    samples = 0
    import gc

    gc.collect()
    rss_before_steps = _proc_status_mb("VmRSS")
    peak_reset = _reset_peak_rss()
    for step in range(warmup + steps):
        if step == warmup:
            timer.reset()
            parts = dict.fromkeys(parts, 0.0)
            samples = 0
        t0 = time.perf_counter()
        batch = next(stream)
        t1 = time.perf_counter()
        if "mgm_bad_samples" in batch:
            raise RuntimeError(f"bad samples in the benchmark data: {batch['mgm_bad_samples'][:1]}")
        loss = model(**batch).loss
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        parts["data_wait"] += t1 - t0
        parts["backward"] += t3 - t2
        parts["optimizer"] += t4 - t3
        parts["step"] += t4 - t0
        samples += batch["input_ids"].shape[0]
    step_peak = _proc_status_mb("VmHWM") if peak_reset else None
    total = parts.pop("step")
    sections = {**timer.totals, **parts}
    sections["other_forward"] = max(0.0, total - sum(sections.values()))
    return {
        "stage": stage,
        "samples_per_s": samples / total,
        "step_ms": 1000 * total / steps,
        "share": {k: v / total for k, v in sections.items()},
        "sync_load_ms_per_batch": 1000 * load_per_batch,
        "activation_mb": act["total"] / 2**20,
        "activation_common_mb": act_common["total"] / 2**20,
        "activation_common_by_section_mb": {k: v / 2**20 for k, v in act_common.items() if k != "total"},
        "gradient_checkpointing": checkpointing,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # peak RSS while training minus RSS with the model loaded: activations + gradients + optimizer state
        "step_memory_mb": (step_peak - rss_before_steps) if step_peak and rss_before_steps else None,
        "rss_before_mb": rss_start / 1024,
        "trainable_params": sum(p.numel() for p in trainable),
        "batch": batch_size,
        "workers": workers,
        "tokens_per_sample": float(first["attention_mask"].sum()) / first["input_ids"].shape[0],
    }


# ---------------------------------------------------------------------------------------------------
# driver


def report(results: list[dict]) -> str:
    keys = ["data_wait", "vision_towers", "mining", "projector", "llm_forward", "other_forward", "backward",
            "optimizer"]
    lines = ["stage  samples/s  step ms  " + "  ".join(f"{k:>13s}" for k in keys)
             + "  activ. MB (own data / common batch)  peak RSS MB"]
    for r in results:
        shares = "  ".join(f"{100 * r['share'].get(k, 0.0):12.1f}%" for k in keys)
        lines.append(f"{r['stage']:5d}  {r['samples_per_s']:9.1f}  {r['step_ms']:7.1f}  {shares}  "
                     f"{r['activation_mb']:16.1f} / {r['activation_common_mb']:6.1f}       {r['peak_rss_mb']:11.0f}")
    by_stage = {r["stage"]: r for r in results}
    if 1 in by_stage and 2 in by_stage:
        ratio = by_stage[1]["activation_common_mb"] / by_stage[2]["activation_common_mb"]
        lines.append(f"stage-1 / stage-2 activation memory on the same batch: {ratio:.2f} (target < 0.5)")
        if by_stage[1].get("step_memory_mb") and by_stage[2].get("step_memory_mb"):
            lines.append(f"training-step memory (activations + gradients + optimizer state, peak RSS over the "
                         f"loaded model): stage 1 {by_stage[1]['step_memory_mb']:.0f} MB, stage 2 "
                         f"{by_stage[2]['step_memory_mb']:.0f} MB, ratio "
                         f"{by_stage[1]['step_memory_mb'] / by_stage[2]['step_memory_mb']:.2f}")
        for r in results:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["activation_common_by_section_mb"].items()))
            lines.append(f"  stage {r['stage']} saved activations by part (MB): {parts}")
    for r in results:
        lines.append(f"stage {r['stage']}: data wait {100 * r['share']['data_wait']:.1f}% of step time with "
                     f"{r['workers']} workers (target < 5%); one batch loads in {r['sync_load_ms_per_batch']:.0f} "
                     f"ms synchronously; {r['tokens_per_sample']:.0f} text tokens/sample, "
                     f"{r['trainable_params']:,} trainable parameters")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_train.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="measured steps per stage (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="steps before measuring (default 3)")
    parser.add_argument("--batch", type=int, default=4, help="per-device batch (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--workdir", type=Path, default=None, help="where models and data are built (default: a "
                                                                   "temporary folder)")
    parser.add_argument("--stages", default="1,2", help="stages to run (default 1,2)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="checkpoint the LLM layers (the released scripts' --gradient_checkpointing True)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--_child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_assets", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args._child is not None:  # one stage in a fresh process, so peak RSS is this stage's alone
        result = run_stage(json.loads(args._assets), args._child, args.steps, args.warmup, args.batch, args.workers,
                           args.gradient_checkpointing)
        print("RESULT " + json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        assets = build_assets(workdir)
        results = []
        for stage in (int(s) for s in args.stages.split(",")):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", str(stage), "--_assets",
                   json.dumps(assets), "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch",
                   str(args.batch), "--workers", str(args.workers)]
            if args.gradient_checkpointing:
                cmd.append("--gradient-checkpointing")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.stderr.write(proc.stderr[-4000:])
                return 1
            results.append(json.loads(lines[-1][len("RESULT "):]))
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
