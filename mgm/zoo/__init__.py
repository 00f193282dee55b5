"""Tiny model zoo: build real-layout tiny MGM checkpoints, towers, base LLMs and tokenizers locally.

`python -m mgm.zoo.tiny --out DIR` (or `python -m mgm.zoo --out DIR`) writes the zoo; from Python use
`build_tiny_zoo(out_dir, seed=0)`, which returns the manifest. See mgm/zoo/tiny.py for the tree.
Nothing here imports `mgm.model`: the checkpoints are an independent rendering of the original format.
"""
from __future__ import annotations

from typing import Any

__all__ = ["build_tiny_zoo"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import mgm.zoo` does not pull torch/transformers in.
    if name == "build_tiny_zoo":
        from mgm.zoo.tiny import build_tiny_zoo

        return build_tiny_zoo
    raise AttributeError(f"module 'mgm.zoo' has no attribute {name!r}")
