"""`python -m mgm.integrations.vlmevalkit.run`: VLMEvalKit's run.py with MGM checkpoints registered.

    python -m mgm.integrations.vlmevalkit.run --mgm MGM-7B-HD=/ckpt/MGM-7B-HD \\
        --mgm MGM-Tiny=/ckpt/tiny,conv_mode=vicuna_v1,max_new_tokens=64 \\
        --data MMBench_DEV_EN --model MGM-7B-HD MGM-Tiny --mode infer --work-dir outputs

Each `--mgm NAME=PATH[,key=value...]` registers one checkpoint under NAME (keys: conv_mode,
model_base, device, load_8bit, temperature, top_p, num_beams, max_new_tokens); every other argument
goes unchanged to VLMEvalKit's run.py (`python -m vlmeval --help` lists them). A `--config` JSON may
also name the class directly: {"model": {"NAME": {"class": "MGM", "model_path": "/ckpt"}}, ...}.
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


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Register the --mgm checkpoints, then run VLMEvalKit's run.py on the remaining arguments."""
    args, rest = build_parser().parse_known_args(argv)
    try:
        import vlmeval.run
    except ImportError:
        raise UserError("VLMEvalKit is not installed in this python: pip install 'mgm[vlmevalkit]' "
                        "(or scripts/setup_eval_harness_venv.sh vlmevalkit)") from None
    from mgm.integrations.vlmevalkit import expose_class, register

    specs = [parse_spec(spec) for spec in args.mgm]  # all checked before anything is registered
    expose_class()
    for name, path, kwargs in specs:
        register(name, path, **kwargs)
    sys.argv = ["vlmeval/run.py", *rest]  # run.py parses sys.argv itself
    vlmeval.run.main()


if __name__ == "__main__":
    main()
