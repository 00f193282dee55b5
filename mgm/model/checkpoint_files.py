"""Read a checkpoint folder's weight files the way the original's loaders saw them (docs/original.md#checkpoint-layout).

A folder holds sharded safetensors (+ `model.safetensors.index.json`), sharded `.bin` (+ index), or a
single `model.safetensors` / `pytorch_model.bin`. `CheckpointFiles` maps every key to its file and
loads chosen keys without reading unrelated shards.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


class CheckpointFiles:
    """Key -> file map of a checkpoint folder (empty when the folder has no weights)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.key_to_file: dict[str, Path] = {}
        for index_name in INDEX_FILES:
            index = self.folder / index_name
            if index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                self.key_to_file = {k: self.folder / f for k, f in weight_map.items()}
                return
        for single in SINGLE_FILES:
            file = self.folder / single
            if file.is_file():
                self.key_to_file = {k: file for k in _keys_of(file)}
                return

    def __bool__(self) -> bool:
        return bool(self.key_to_file)

    def keys(self) -> list[str]:
        return list(self.key_to_file)

    def files_with(self, substrings: tuple[str, ...]) -> set[Path]:
        """Files holding any key that contains one of `substrings` (the original's shard selection)."""
        return {f for k, f in self.key_to_file.items() if any(s in k for s in substrings)}

    def keys_in(self, files: set[Path]) -> list[str]:
        return [k for k, f in self.key_to_file.items() if f in files]

    def load(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """Tensors for `keys`, reading each needed file once."""
        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.key_to_file[k], []).append(k)
        out: dict[str, torch.Tensor] = {}
        for file, file_keys in by_file.items():
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(file), framework="pt") as handle:
                    for k in file_keys:
                        out[k] = handle.get_tensor(k)
            else:
                state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
                out.update({k: state[k] for k in file_keys})
        return out

    def shapes(self, prefix: str) -> dict[str, torch.Tensor]:
        """Meta tensors (shape only) of keys starting with `prefix`; cheap for safetensors."""
        keys = [k for k in self.key_to_file if k.startswith(prefix)]
        out: dict[str, torch.Tensor] = {}
        for k in keys:
            file = self.key_to_file[k]
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(file), framework="pt") as handle:
                    out[k] = torch.empty(handle.get_slice(k).get_shape(), device="meta")
            else:
                out.update({key: torch.empty(v.shape, device="meta") for key, v in self.load([k]).items()})
        return out


def _keys_of(file: Path) -> list[str]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            return list(handle.keys())
    return list(torch.load(str(file), map_location="cpu", weights_only=True, mmap=True).keys())
