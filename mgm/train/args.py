"""Training flags: the original argument dataclasses (docs/original.md#training), parsed by `HfArgumentParser`.

Every original flag keeps its name and default; booleans take `True`/`False`. On top of that:
- `--config preset.yaml`: a YAML mapping `flag: value` read first; flags on the command line override it.
- flags that newer transformers renamed still work: `--evaluation_strategy` (now `eval_strategy`) and
  `--warmup_ratio` (now a fraction given to `warmup_steps`);
- `--local_rank` (passed by the `deepspeed` launcher) is accepted;
- machine adaptation, each with a warning: `--tf32 True` is ignored without CUDA, training runs on the
  CPU (`use_cpu`) when there is no GPU, and `--report_to` integrations that are not installed are dropped;
- additions: `--skip_bad_samples` (data), `--attn_implementation` (model).

`parse_args(argv)` returns `(ModelArguments, DataArguments, TrainingArguments)`; `check_flags(argv)` only
checks names and values (no device or DeepSpeed set-up), for validating scripts.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import transformers

from mgm.errors import UserError
from mgm.program import program_name
from mgm.train.arg_fields import (  # noqa: F401 (re-exported: the original names)
    BITS_CHOICES,
    DESCRIPTION,
    LORA_BIAS_CHOICES,
    DataArguments,
    MGMTrainingFields,
    ModelArguments,
)


@dataclass
class TrainingArguments(MGMTrainingFields, transformers.TrainingArguments):
    """HF TrainingArguments with the original MGM additions (and defaults) and the renamed-flag aliases."""

    def __post_init__(self) -> None:
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise UserError(f"--warmup_ratio {self.warmup_ratio} must be in [0, 1)")
            if self.warmup_steps:
                warnings.warn(f"--warmup_ratio {self.warmup_ratio} ignored: --warmup_steps {self.warmup_steps} is set")
            else:
                self.warmup_steps = self.warmup_ratio
        if self.bits not in BITS_CHOICES:
            raise UserError(f"--bits {self.bits} is not supported; valid: 4, 8, 16")
        if self.lora_bias not in LORA_BIAS_CHOICES:
            raise UserError(f"--lora_bias {self.lora_bias!r} is unknown; valid: {', '.join(LORA_BIAS_CHOICES)}")
        if self.quant_type not in ("nf4", "fp4"):
            raise UserError(f"--quant_type {self.quant_type!r} is unknown; valid: nf4, fp4")
        parse_lr_multi(self.lr_multi)
        _adapt_to_machine(self)
        try:
            super().__post_init__()
        except ValueError as exc:
            raise UserError(f"training flags: {exc}") from None


def parse_lr_multi(value: str | None) -> dict[str, float]:
    """'model.mm_projector:2,model.vlm_uni:2' -> {'model.mm_projector': 2.0, 'model.vlm_uni': 2.0}."""
    if not value:
        return {}
    out: dict[str, float] = {}
    for part in value.split(","):
        key, sep, mult = part.strip().rpartition(":")
        try:
            if not sep or not key:
                raise ValueError
            out[key] = float(mult)
        except ValueError:
            raise UserError(f"--lr_multi {value!r}: expected 'substring:multiplier,...', bad part {part!r}") from None
    return out


def _adapt_to_machine(args: TrainingArguments) -> None:
    """Let the original GPU scripts' flags run here: no tf32 without CUDA, CPU training without a GPU."""
    import torch

    if torch.cuda.is_available():
        pass
    else:
        if args.tf32:
            warnings.warn("--tf32 True ignored: TF32 needs an NVIDIA Ampere (or newer) GPU")
            args.tf32 = None
        mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        if not args.use_cpu and (not mps or args.deepspeed):
            # HF needs this for bf16 and for more than one process without a GPU.
            args.use_cpu = True
    report = args.report_to
    if isinstance(report, str):
        report = [report]
    if report and report not in (["none"], ["all"]):
        from transformers.integrations import get_available_reporting_integrations

        available = set(get_available_reporting_integrations())
        missing = [r for r in report if r not in available and r != "none"]
        if missing:
            warnings.warn(f"--report_to {' '.join(missing)} ignored: not installed (pip install {' '.join(missing)})")
            report = [r for r in report if r not in missing]
        args.report_to = report or "none"


# ---------------------------------------------------------------------------------------------------
# parsing


def build_parser() -> transformers.HfArgumentParser:
    """The parser of the training entry points (all three dataclasses plus `--config`)."""
    parser = transformers.HfArgumentParser(
        (ModelArguments, DataArguments, TrainingArguments),
        prog=program_name("python -m mgm.train.train"),
        description=DESCRIPTION,
    )
    parser.add_argument("--config", default=None, help="YAML preset: a mapping of flag names (without --) to values")
    return parser


def _yaml_to_argv(file: str) -> list[str]:
    import yaml

    path = Path(file)
    if not path.is_file():
        raise UserError(f"--config {file} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"--config {file} is not valid YAML: {exc}") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise UserError(f"--config {file} must be a mapping of flag names to values, got a {type(data).__name__}")
    argv: list[str] = []
    for key, value in data.items():
        flag = "--" + str(key).lstrip("-")
        if flag == "--config":
            raise UserError(f"--config {file}: a preset cannot name another preset")
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [flag, str(value)]
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def expand_config(argv: Sequence[str]) -> list[str]:
    """Replace `--config FILE` by the flags of the YAML file, placed first so command-line flags win."""
    argv = list(argv)
    preset: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UserError("--config needs a YAML file")
            preset += _yaml_to_argv(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--config="):
            preset += _yaml_to_argv(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return preset + rest


def check_flags(argv: Sequence[str]) -> argparse.Namespace:
    """Parse flag names and values only (no device, distributed or DeepSpeed set-up); UserError on unknown ones."""
    parser = build_parser()
    namespace, extra = parser.parse_known_args(expand_config(argv))
    if extra:
        raise UserError(f"unknown training flag(s): {' '.join(extra)} (see --help)")
    return namespace


def parse_args(argv: Sequence[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse the training command line (YAML preset first, then flags) into the three dataclasses."""
    argv = expand_config(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    _, extra = parser.parse_known_args(argv)  # --help exits here
    if extra:
        raise UserError(f"unknown training flag(s): {' '.join(extra)} (see --help)")
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)[:3]
    except ValueError as exc:
        raise UserError(f"training flags: {exc}") from None
    return model_args, data_args, training_args
