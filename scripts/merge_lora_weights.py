"""Merge a LoRA training output into a full MGM checkpoint: `python scripts/merge_lora_weights.py
--model-path LORA_DIR --model-base BASE_LLM_DIR --save-model-path OUT_DIR` (the original flags).

LORA_DIR is what `--lora_enable True` training wrote (adapter_config.json, adapter weights, config.json,
non_lora_trainables.bin); BASE_LLM_DIR the LLM it was trained on (`--model_name_or_path`). The result is
a full checkpoint in the original layout (+ tokenizer), loadable by `load_pretrained_model` and
`python -m mgm.serve.cli --model-path OUT_DIR`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mgm.errors import UserError, exit_on_user_error  # noqa: E402

DTYPES = ("auto", "float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python scripts/merge_lora_weights.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True, help="LoRA output folder (adapter_config.json, ...)")
    parser.add_argument("--model-base", required=True, help="the base LLM folder the LoRA run started from")
    parser.add_argument("--save-model-path", required=True, help="where to write the merged checkpoint")
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="weights dtype of the merged checkpoint (auto: the base LLM's dtype, float32 if unknown)")
    return parser


def _dtype(name: str, base: Path):
    import json

    import torch

    if name == "auto":
        cfg = json.loads((base / "config.json").read_text()) if (base / "config.json").is_file() else {}
        name = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path, base, out = Path(args.model_path), Path(args.model_base), Path(args.save_model_path)
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"--model-path {path} has no adapter_config.json: not a LoRA training output")
    if not base.is_dir():
        raise UserError(f"--model-base {base} is not a folder")
    from mgm.mm_utils import get_model_name_from_path
    from mgm.model.builder import load_pretrained_model

    tokenizer, model, _, _ = load_pretrained_model(str(path), str(base), get_model_name_from_path(str(path)),
                                                   device="cpu", dtype=_dtype(args.dtype, base))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    print(f"merged checkpoint written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
