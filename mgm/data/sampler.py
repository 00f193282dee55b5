"""Length-grouped and modality-grouped sampling of the original `LLaVATrainer` (docs/original.md#training).

Indices are drawn in "megabatches" of `world_size × batch_size` (world_size here counts data-parallel
ranks × gradient-accumulation steps, as the original passed it); each megabatch is sorted by length and
split into `world_size` chunks of balanced total length, so every rank/step gets similar-length samples.
With `group_by_modality`, image samples (positive lengths) and text-only samples (negative lengths) never
share a megabatch; the two partial leftovers are merged into one last megabatch.

Unlike the original, which drew from the global torch RNG, the order comes from a generator seeded with
`seed + epoch`: the same epoch always yields the same order, which is what lets a resumed run skip exactly
the batches it had already trained on.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def split_to_even_chunks(indices: list[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Split `indices` into `num_chunks` chunks of equal count, greedily balancing their total length.

    When the count does not divide, fall back to a strided split (the original rule).
    """
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = float("inf")
    return chunks


def get_length_grouped_indices(lengths: Sequence[int], batch_size: int, world_size: int,
                               generator: torch.Generator | None = None) -> list[int]:
    """Random permutation, cut into megabatches, each sorted by length (longest first) and split evenly."""
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    size = world_size * batch_size
    megabatches = [indices[i: i + size] for i in range(0, len(lengths), size)]
    megabatches = [sorted(mb, key=lambda i: lengths[i], reverse=True) for mb in megabatches]
    return [i for mb in megabatches for chunk in split_to_even_chunks(mb, lengths, world_size) for i in chunk]


def get_modality_length_grouped_indices(lengths: Sequence[int], batch_size: int, world_size: int,
                                        generator: torch.Generator | None = None) -> list[int]:
    """Length grouping within each modality (sign of the length); megabatches never mix modalities."""
    if any(length == 0 for length in lengths):
        raise ValueError("modality lengths must be non-zero (positive: image sample, negative: text-only sample)")
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return get_length_grouped_indices([abs(x) for x in lengths], batch_size, world_size, generator)
    mm = [(i, x) for i, x in enumerate(lengths) if x > 0]
    lang = [(i, -x) for i, x in enumerate(lengths) if x < 0]
    mm_order = [mm[k][0] for k in get_length_grouped_indices([x for _, x in mm], batch_size, world_size, generator)]
    lang_order = [lang[k][0]
                  for k in get_length_grouped_indices([x for _, x in lang], batch_size, world_size, generator)]
    size = world_size * batch_size
    mm_mb = [mm_order[i: i + size] for i in range(0, len(mm_order), size)]
    lang_mb = [lang_order[i: i + size] for i in range(0, len(lang_order), size)]
    leftover = mm_mb[-1] + lang_mb[-1]
    megabatches = mm_mb[:-1] + lang_mb[:-1]
    order = torch.randperm(len(megabatches), generator=generator).tolist()
    megabatches = [megabatches[i] for i in order]
    if leftover:
        megabatches.append(sorted(leftover))
    return [i for mb in megabatches for i in mb]


class LengthGroupedSampler(Sampler[int]):
    """Yields every index once per epoch, grouped by (modality and) length; `set_epoch` changes the order."""

    def __init__(self, batch_size: int, world_size: int, lengths: Sequence[int], group_by_modality: bool = False,
                 seed: int = 0) -> None:
        if batch_size < 1 or world_size < 1:
            raise ValueError("batch_size and world_size must be >= 1")
        self.batch_size = batch_size
        self.world_size = world_size
        self.lengths = list(lengths)
        self.group_by_modality = group_by_modality
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        if self.group_by_modality:
            order = get_modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size, generator)
        else:
            order = get_length_grouped_indices([abs(x) for x in self.lengths], self.batch_size, self.world_size,
                                               generator)
        return iter(order)
