"""MGM training entry point: `python -m mgm.train.train [flags]`, `torchrun ... mgm/train/train.py`,
`deepspeed mgm/train/train.py` (docs/original.md#training). `mgm/train/train_mem.py` is the same with
flash-attention-2 when it is installed.

Flow: parse the original flags (`mgm.train.args`) → build the stage's model and tokenizer
(`mgm.train.model_init`) → lazy dataset + collator (`mgm.data`) → `MGMTrainer` → resume from the latest
resumable `checkpoint-N` of `--output_dir` (or `--resume_from_checkpoint`) → train → save:
stage 1 `mm_projector.bin` + `config.json`; LoRA adapter + `non_lora_trainables.bin`; otherwise the full
checkpoint in the original layout (+ tokenizer), loadable by `load_pretrained_model` and the CLI.

Run with `--help` for every flag. Without `RANK`/`WORLD_SIZE` set, a `--deepspeed` run starts as a single
process by itself.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if __package__ in (None, ""):
    # Run as a file (`deepspeed mgm/train/train.py`): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mgm.errors import UserError  # noqa: E402
from mgm.train.arg_fields import wants_help  # noqa: E402
from mgm.train.help import build_help_parser  # noqa: E402

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger("mgm.train")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_environment(argv: Sequence[str]) -> None:
    """Process-level set-up that must happen before the flags are turned into TrainingArguments (which set
    up the distributed state): single-process defaults for DeepSpeed, and no JIT-built shm op on CPU."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uses_deepspeed = any(a == "--deepspeed" or a.startswith("--deepspeed=") for a in argv)
    if not uses_deepspeed:
        return
    if "RANK" not in os.environ and "LOCAL_RANK" not in os.environ:
        # Plain `python train.py --deepspeed ...`: a world of one.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    import torch

    if not torch.cuda.is_available():
        # DeepSpeed's CPU accelerator would compile its shared-memory collective op on every cold start
        # (about a minute); gloo does the same job here.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _init_deepspeed_comm() -> None:
    """Attach DeepSpeed's communication layer to the process group the Trainer arguments created.

    On CPU, accelerate initialises torch.distributed itself; without this, `zero.Init` (ZeRO-3 model
    construction) sees a world of one and rejects the batch-size arithmetic.
    """
    import deepspeed
    import torch
    import torch.distributed as dist

    if deepspeed.comm.is_initialized():
        return
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
    else:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)


def _configure_logging(training_args) -> None:
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, stream=sys.stderr)
    logger.setLevel(level)
    logging.getLogger("mgm").setLevel(level)


def train(attn_implementation: str | None = None, argv: Sequence[str] | None = None) -> dict:
    """Run one training stage; returns a summary dict (output_dir, stage, steps, final loss, skipped)."""
    import transformers

    from mgm.data.collator import DataCollatorForSupervisedDataset
    from mgm.data.dataset import DataConfig, LazySupervisedDataset
    from mgm.train.args import parse_args
    from mgm.train.checkpoint import resolve_resume, save_lora
    from mgm.train.model_init import build_training_setup
    from mgm.train.trainer import MGMTrainer

    argv = list(sys.argv[1:] if argv is None else argv)
    prepare_environment(argv)
    model_args, data_args, training_args = parse_args(argv)
    _configure_logging(training_args)
    if training_args.deepspeed:
        _init_deepspeed_comm()
    if not data_args.data_path:
        raise UserError("--data_path is required (a LLaVA conversation .json or .jsonl file)")
    if data_args.image_folder and not Path(data_args.image_folder).is_dir():
        raise UserError(f"--image_folder {data_args.image_folder} is not a folder")
    transformers.set_seed(training_args.seed)

    setup = build_training_setup(model_args, data_args, training_args, attn_implementation)
    counts = trainable_summary(setup.model)
    logger.info("stage %s, template %s; trainable parameters: %s", setup.stage, setup.template_name,
                ", ".join(f"{k} {v:,}" for k, v in counts.items() if v))

    settings = setup.base_model.mgm_settings if setup.multimodal else None
    config = DataConfig(
        template_name=setup.template_name, model_max_length=training_args.model_max_length,
        multimodal=setup.multimodal, image_folder=data_args.image_folder, image_processor=setup.image_processor,
        image_aspect_ratio=data_args.image_aspect_ratio, mm_use_im_start_end=model_args.mm_use_im_start_end,
        **DataConfig.image_fields(settings))
    dataset = LazySupervisedDataset(data_args.data_path, setup.tokenizer, config)
    collator = DataCollatorForSupervisedDataset(setup.tokenizer, training_args.model_max_length)

    trainer = MGMTrainer(model=setup.model, args=training_args, train_dataset=dataset, data_collator=collator,
                         processing_class=setup.tokenizer, stage=setup.stage, lora=setup.lora,
                         skip_bad_samples=data_args.skip_bad_samples,
                         include_embeddings_in_adapter=model_args.mm_use_im_start_end)
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    if resume is not None:
        logger.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    trainer.save_state()

    base = setup.base_model
    base.config.use_cache = True
    out = training_args.output_dir
    if setup.lora and setup.stage != "pretrain":
        save_lora(setup.model, out, bias=training_args.lora_bias, is_main_process=training_args.should_save,
                  tokenizer=setup.tokenizer)
    else:  # stage 1: mm_projector.bin (MGMTrainer.save_model); else the full checkpoint
        trainer.save_model(out)
    if trainer.skipped_samples:
        logger.warning("skipped %d bad sample(s) on this rank; see %s", trainer.skipped_samples,
                       Path(out) / "skipped_samples.jsonl")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"output_dir": out, "stage": setup.stage, "global_step": trainer.state.global_step,
            "train_loss": getattr(result, "training_loss", None), "losses": losses,
            "skipped_samples": trainer.skipped_samples, "resumed_from": str(resume) if resume else None}


def main(argv: Sequence[str] | None = None, attn_implementation: str | None = None) -> int:
    """Entry point: one line on stderr and exit status 2 for bad flags, files or samples."""
    if wants_help(list(sys.argv[1:] if argv is None else argv)):
        # Answer from mgm's own flags before torch and transformers load (`--help-all` loads them).
        build_help_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        train(attn_implementation=attn_implementation, argv=argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts by part: llm, lora, mm_projector, vlm_uni, vision_tower, vision_tower_aux."""
    out = {"llm": 0, "lora": 0, "mm_projector": 0, "vlm_uni": 0, "vision_tower": 0, "vision_tower_aux": 0}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        n = int(getattr(p, "ds_numel", p.numel()))
        if "lora_" in name:
            out["lora"] += n
        elif "mm_projector" in name:
            out["mm_projector"] += n
        elif "vlm_uni" in name:
            out["vlm_uni"] += n
        elif "vision_tower_aux" in name:
            out["vision_tower_aux"] += n
        elif "vision_tower" in name:
            out["vision_tower"] += n
        else:
            out["llm"] += n
    return out


if __name__ == "__main__":
    sys.exit(main())
