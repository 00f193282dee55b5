"""`MGMTrainer`: the HF Trainer with the original `LLaVATrainer` behaviour (docs/original.md#training), made resumable.

- sampler: modality + length grouping with `--group_by_modality_length True` (mgm.data.sampler);
- optimizer groups: weight decay off for biases and norm weights; `--mm_projector_lr` gives the projector
  its own learning rate, or `--lr_multi substr:mult,...` multiplies the learning rate of matching parameters;
- stage 1 saves only the adapter (`mm_projector.bin` + `config.json`) where HF would save the model — in
  intermediate `checkpoint-N` folders too, which also get the optimizer, scheduler and RNG state, so resuming
  restores everything (the original's stage-1 checkpoints could not be resumed, docs/original.md#fixed-defects);
- LoRA checkpoints carry `non_lora_trainables.bin` as well, reloaded on resume;
- bad samples (see mgm.data.collator): the first one stops training with its id and path, or, with
  `--skip_bad_samples True`, each is logged to `<output_dir>/skipped_samples.jsonl` and counted.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from mgm.data.collator import BAD_SAMPLES_KEY, EMPTY_BATCH_KEY
from mgm.data.dataset import BadSample, BadSampleError
from mgm.errors import UserError
from mgm.train.args import parse_lr_multi
from mgm.train.checkpoint import (ADAPTER_FILE, NON_LORA_FILE, gathered, load_non_lora, non_lora_state_dict,
                                  save_adapter, save_config, unwrap)

logger = logging.getLogger(__name__)
SKIPPED_FILE = "skipped_samples.jsonl"


class MGMTrainer(Trainer):
    """HF Trainer for MGM stages (see module docstring)."""

    def __init__(self, *args, stage: str = "finetune", lora: bool = False, skip_bad_samples: bool = False,
                 include_embeddings_in_adapter: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mgm_stage = stage
        self.mgm_lora = lora
        self.skip_bad_samples = skip_bad_samples
        self.include_embeddings_in_adapter = include_embeddings_in_adapter
        self.skipped_samples = 0

    # -- data ----------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.group_by_modality_length and dataset is not None and hasattr(dataset, "modality_lengths"):
            from mgm.data.sampler import LengthGroupedSampler

            return LengthGroupedSampler(
                self.args.train_batch_size,
                world_size=self.args.world_size * self.args.gradient_accumulation_steps,
                lengths=dataset.modality_lengths, group_by_modality=True, seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def _handle_bad_samples(self, records: list[dict] | None) -> None:
        if not records:
            return
        if not self.skip_bad_samples:
            first = records[0]
            raise BadSampleError(BadSample.from_record(first), hint=(
                "Training stops at the first bad sample: fix or remove it (check the whole file with "
                f"`python -m mgm.data.check --data-path {first['data_path']} --image-folder DIR`), or pass "
                "--skip_bad_samples True to skip and count such samples"))
        self.skipped_samples += len(records)
        out = Path(self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        rank = self.args.process_index
        with open(out / SKIPPED_FILE, "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps({**record, "rank": rank, "step": self.state.global_step}) + "\n")
        for record in records:
            logger.warning("skipping bad sample id=%r (index %s): %s", record["id"], record["index"], record["reason"])

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch=None):
        self._handle_bad_samples(inputs.pop(BAD_SAMPLES_KEY, None))
        if inputs.pop(EMPTY_BATCH_KEY, False):
            # Every sample of this batch was skipped: run the forward anyway (all ranks must take part in
            # the same collectives) with a loss that is exactly zero.
            inputs.pop("labels", None)
            outputs = model(**inputs)
            loss = outputs.logits.float().sum() * 0.0
            return (loss, outputs) if return_outputs else loss
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.skip_bad_samples and "loss" in logs:
            logs["skipped_samples"] = self.skipped_samples
        super().log(logs, start_time)

    # -- optimizer -----------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
        if not named:
            raise UserError("no parameter is trainable with these flags (check --tune_mm_mlp_adapter, "
                            "--freeze_mm_mlp_adapter, --freeze_backbone, --lora_enable)")
        groups = parameter_groups(named, decay, self.args.learning_rate, self.args.weight_decay,
                                  self.args.mm_projector_lr, parse_lr_multi(self.args.lr_multi))
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        for key in ("params", "model", "optimizer_dict"):
            optimizer_kwargs.pop(key, None)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        if "bitsandbytes" in str(optimizer_cls) and optimizer_kwargs.get("optim_bits") == 8:
            import bitsandbytes

            # 8-bit Adam keeps embeddings in 32-bit optimizer state, as the original did.
            manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
            for module in opt_model.modules():
                if isinstance(module, nn.Embedding):
                    manager.register_module_override(module, "weight", {"optim_bits": 32})
        return self.optimizer

    # -- saving / loading ----------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self.mgm_stage != "pretrain":
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        # Intermediate checkpoints (called from _save_checkpoint) keep mm_projector.bin inside checkpoint-N.
        save_adapter(self.model, output_dir, is_main_process=self.args.should_save, final=not _internal_call,
                     include_embeddings=self.include_embeddings_in_adapter)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.mgm_lora and self.args.should_save:
            out = Path(output_dir or self.args.output_dir)
            torch.save(non_lora_state_dict(self.model), out / NON_LORA_FILE)
            save_config(self.model, out)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        folder = Path(resume_from_checkpoint)
        target = model if model is not None else self.model
        if self.mgm_stage == "pretrain" and (folder / ADAPTER_FILE).is_file():
            load_trainable_from_adapter(target, folder / ADAPTER_FILE)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.mgm_lora:
            load_non_lora(unwrap_peft(target), folder)


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The PEFT model inside DDP/DeepSpeed wrappers (parameter names as saved in non_lora_trainables.bin)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def load_trainable_from_adapter(model: nn.Module, file: Path) -> None:
    """Resume stage 1: every trainable parameter must come back from the checkpoint's mm_projector.bin."""
    base = unwrap(model)
    state = torch.load(str(file), map_location="cpu", weights_only=True)
    params = dict(base.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    missing = [n for n in trainable if n not in state]
    if missing:
        raise UserError(f"cannot resume from {file}: it lacks trainable parameters {missing[:4]}")
    found = [n for n in state if n in params]
    with gathered([params[n] for n in found], modifier_rank=0), torch.no_grad():
        for n in found:
            params[n].data.copy_(state[n].to(dtype=params[n].dtype, device=params[n].device))


def parameter_groups(named: list[tuple[str, torch.Tensor]], decay: set[str], lr: float, weight_decay: float,
                     mm_projector_lr: float | None, lr_multi: dict[str, float]) -> list[dict]:
    """Optimizer groups of the original LLaVATrainer (docs/original.md#training); empty groups are dropped.

    Each group also records `name` for logs and tests.
    """
    def group(name: str, params: list, wd: float, group_lr: float | None = None) -> dict:
        g = {"name": name, "params": params, "weight_decay": wd}
        if group_lr is not None:
            g["lr"] = group_lr
        return g

    groups: list[dict] = []
    if mm_projector_lr is not None:
        proj = [(n, p) for n, p in named if "mm_projector" in n]
        rest = [(n, p) for n, p in named if "mm_projector" not in n]
        groups += [
            group("decay", [p for n, p in rest if n in decay], weight_decay),
            group("no_decay", [p for n, p in rest if n not in decay], 0.0),
            group("mm_projector_decay", [p for n, p in proj if n in decay], weight_decay, mm_projector_lr),
            group("mm_projector_no_decay", [p for n, p in proj if n not in decay], 0.0, mm_projector_lr),
        ]
    elif lr_multi:
        keys = list(lr_multi)
        rest = [(n, p) for n, p in named if not any(k in n for k in keys)]
        groups += [group("decay", [p for n, p in rest if n in decay], weight_decay),
                   group("no_decay", [p for n, p in rest if n not in decay], 0.0)]
        taken: set[str] = {n for n, _ in rest}
        for key, mult in lr_multi.items():
            mine = [(n, p) for n, p in named if key in n and n not in taken]
            taken |= {n for n, _ in mine}
            groups += [group(f"{key}_decay", [p for n, p in mine if n in decay], weight_decay, lr * mult),
                       group(f"{key}_no_decay", [p for n, p in mine if n not in decay], 0.0, lr * mult)]
    else:
        groups += [group("decay", [p for n, p in named if n in decay], weight_decay),
                   group("no_decay", [p for n, p in named if n not in decay], 0.0)]
    return [g for g in groups if g["params"]]
