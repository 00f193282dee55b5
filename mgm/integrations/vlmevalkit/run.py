"""`python -m mgm.integrations.vlmevalkit.run`: VLMEvalKit's run.py with MGM checkpoints registered.

    python -m mgm.integrations.vlmevalkit.run --mgm MGM-7B-HD=/ckpt/MGM-7B-HD \\
        --mgm MGM-Tiny=/ckpt/tiny,conv_mode=vicuna_v1,max_new_tokens=64 \\
        --data MMBench_DEV_EN --model MGM-7B-HD MGM-Tiny --mode infer --work-dir outputs

Each `--mgm NAME=PATH[,key=value...]` registers one checkpoint under NAME (keys: conv_mode,
model_base, device, load_8bit, temperature, top_p, num_beams, max_new_tokens); every other argument
goes unchanged to VLMEvalKit's run.py (`python -m vlmeval --help` lists them). A `--config` JSON may
also name the class directly: {"model": {"NAME": {"class": "MGM", "model_path": "/ckpt"}}, ...}.

Before any model loads, each `--data` name is checked, because VLMEvalKit logs these cases, skips the
dataset and exits 0: a name that is neither a VLMEvalKit dataset nor a local TSV `$LMUData/NAME.tsv`
is an error (exit 2), and so is a local VQA TSV (no `A`/`B` option columns) without `--mode infer`
(VLMEvalKit has no scorer for it: it would infer, then fail at scoring). Predictions are written
as TSV unless PRED_FORMAT says otherwise: VLMEvalKit's default xlsx rewrites control characters in
predictions (`_x0014_`), so they would no longer equal the model's answers.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mgm.errors import UserError, exit_on_user_error

_KEYS = ("conv_mode", "model_base", "device", "load_8bit", "temperature", "top_p", "num_beams", "max_new_tokens")


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """`NAME=PATH[,key=value...]` → (name, path, keyword arguments of the MGM class)."""
    head, *rest = spec.split(",")
    name, sep, path = head.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--mgm {spec!r}: expected NAME=PATH[,key=value...]")
    kwargs = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or key not in _KEYS:
            raise UserError(f"--mgm {spec!r}: {item!r} is not key=value with a key among {', '.join(_KEYS)}")
        kwargs[key] = _value(value)
    return name, path, kwargs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mgm.integrations.vlmevalkit.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mgm", action="append", default=[], metavar="NAME=PATH[,key=value...]",
                        help="register an MGM checkpoint under NAME (repeatable)")
    return parser


def check_datasets(rest: Sequence[str]) -> None:
    """Refuse `--data` names VLMEvalKit would skip with exit status 0 (module docstring)."""
    import os

    import pandas as pd
    from vlmeval.dataset import SUPPORTED_DATASETS, supported_video_datasets

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--data", nargs="+", default=[])
    parser.add_argument("--mode", default="all")
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(list(rest))
    if known.config:  # datasets described by the config file: VLMEvalKit builds those itself
        return
    root = os.environ.get("LMUData")
    where = f"LMUData={root}" if root else "LMUData is not set, so VLMEvalKit reads ~/LMUData"
    for name in known.data:
        if name in SUPPORTED_DATASETS or name in supported_video_datasets:
            continue
        tsv = os.path.join(root if root and os.path.isdir(root) else os.path.expanduser("~/LMUData"), f"{name}.tsv")
        if not os.path.isfile(tsv):
            raise UserError(f"--data {name}: not a VLMEvalKit dataset and no local file {tsv} ({where}); a local "
                            f"set is $LMUData/<NAME>.tsv: set LMUData to the folder that holds {name}.tsv")
        try:
            columns = set(pd.read_csv(tsv, sep="\t", nrows=0).columns)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise UserError(f"--data {name}: {tsv} is not a readable TSV: {exc}") from None
        if "question" not in {c.lower() for c in columns}:
            raise UserError(f"--data {name}: {tsv} has no 'question' column (columns: {', '.join(sorted(columns))})")
        if not {"A", "B"} <= columns and known.mode != "infer":
            raise UserError(f"--data {name}: {tsv} is a VQA set (no A/B option columns) and VLMEvalKit cannot "
                            "score a local VQA set; add --mode infer to write its predictions")


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Register the --mgm checkpoints, then run VLMEvalKit's run.py on the remaining arguments."""
    import os

    args, rest = build_parser().parse_known_args(argv)
    try:
        import vlmeval.run
    except ImportError:
        raise UserError("VLMEvalKit is not installed in this python: pip install 'mgm[vlmevalkit]' "
                        "(or scripts/setup_eval_harness_venv.sh vlmevalkit)") from None
    from mgm.integrations.harness import check_device
    from mgm.integrations.vlmevalkit import expose_class, register

    specs = [parse_spec(spec) for spec in args.mgm]  # all checked before anything is registered
    for _, _, kwargs in specs:
        check_device(str(kwargs.get("device", "auto")))
    check_datasets(rest)
    os.environ.setdefault("PRED_FORMAT", "tsv")  # read by VLMEvalKit when it writes predictions
    expose_class()
    for name, path, kwargs in specs:
        register(name, path, **kwargs)
    sys.argv = ["vlmeval/run.py", *rest]  # run.py parses sys.argv itself
    vlmeval.run.main()


if __name__ == "__main__":
    main()
