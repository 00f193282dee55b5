"""The original `mgm/train/llava_trainer.py` names: the trainer, the length-grouped sampler and the
ZeRO-3-aware parameter gathering, pointing at `mgm.train.trainer`, `mgm.data.sampler`, `mgm.train.checkpoint`."""
from __future__ import annotations

from mgm.data.sampler import (
    LengthGroupedSampler,
    get_length_grouped_indices,
    get_modality_length_grouped_indices,
    split_to_even_chunks,
)
from mgm.train.checkpoint import gather_to_cpu
from mgm.train.trainer import MGMTrainer as LLaVATrainer

__all__ = ["LLaVATrainer", "LengthGroupedSampler", "get_length_grouped_indices",
           "get_modality_length_grouped_indices", "split_to_even_chunks", "maybe_zero_3",
           "get_mm_adapter_state_maybe_zero_3"]


def maybe_zero_3(param, ignore_status: bool = False, name: str | None = None):
    """A detached CPU copy of `param`, gathered first when ZeRO-3 partitions it."""
    return gather_to_cpu([("p", param)])["p"]


def get_mm_adapter_state_maybe_zero_3(named_params, keys_to_match) -> dict:
    """{name: CPU copy} of the parameters whose name contains any of `keys_to_match`."""
    return gather_to_cpu((k, t) for k, t in named_params if any(key in k for key in keys_to_match))
