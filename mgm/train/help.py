"""The quick `--help` of `mgm train` / `python -m mgm.train.train`: mgm's own flags, without transformers.

`--help-all` builds the complete parser (`mgm.train.args`, which loads transformers) only when asked.
"""
from __future__ import annotations

import argparse
import dataclasses

from mgm.program import program_name
from mgm.train.arg_fields import DESCRIPTION, DataArguments, MGMTrainingFields, ModelArguments


class _FullHelp(argparse.Action):
    """`--help-all`: print the complete parser's help (every transformers.TrainingArguments flag) and exit."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from mgm.train.args import build_parser  # loads transformers and torch: only when asked

        build_parser().print_help()
        parser.exit()


def build_help_parser() -> argparse.ArgumentParser:
    """The quick `--help`: mgm's own training flags, with a pointer to `--help-all` for HF's."""
    parser = argparse.ArgumentParser(
        prog=program_name("python -m mgm.train.train"), description=DESCRIPTION,
        usage="%(prog)s [--config FILE.yaml] [--FLAG VALUE ...]",
        epilog="Every transformers.TrainingArguments flag is accepted too (--output_dir, --num_train_epochs, "
               "--per_device_train_batch_size, --learning_rate, --bf16, --deepspeed, --gradient_checkpointing, "
               "...); --help-all lists them all (it loads transformers, a few seconds).")
    parser.add_argument("--help-all", action=_FullHelp, help="show every flag, transformers' included, and exit")
    parser.add_argument("--config", default=None, help="YAML preset: a mapping of flag names (without --) to values")
    for cls in (ModelArguments, DataArguments, MGMTrainingFields):
        group = parser.add_argument_group(cls.__name__, cls.__doc__)
        for f in dataclasses.fields(cls):
            group.add_argument(f"--{f.name}", default=f.default, metavar=f.name.upper(),
                               help=f"{f.metadata.get('help', '')} (default: {f.default})")
    return parser
