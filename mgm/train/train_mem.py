"""`deepspeed mgm/train/train_mem.py [flags]`: the original scripts' entry point (docs/original.md#training).

Same as `mgm/train/train.py`, with flash-attention-2 as the default attention when flash-attn is
installed and CUDA is present (sdpa otherwise, with a warning); `--attn_implementation` overrides it.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file (`deepspeed mgm/train/train_mem.py`): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mgm.train.train import main as _train_main  # noqa: E402


def main(argv=None) -> int:
    return _train_main(argv, attn_implementation="flash_attention_2")


if __name__ == "__main__":
    sys.exit(main())
