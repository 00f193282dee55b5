"""Batch assembly for MGM training (docs/original.md#training `DataCollatorForSupervisedDataset`).

input_ids are right-padded with the pad id and labels with IGNORE_INDEX, both cut to `model_max_length`;
the attention mask marks each row's real length (the original compared ids with the pad id, which also
hid real tokens equal to it, e.g. `<unk>` when pad = unk). Images of all rows are concatenated in row
order: `images` [Σ n_i, ...] and `images_aux` [Σ n_i, 3, S, S], one entry per `<image>` placeholder (or
one zero entry per text-only row), which is the order the model's splicing consumes them in.

`BadSample` records from the dataset are taken out of the batch and passed on under `mgm_bad_samples`
(a list of plain dicts) for the trainer to stop on or count; a batch with only bad samples becomes one
placeholder row that trains nothing, flagged `mgm_empty_batch`, so every rank still runs its step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from mgm.constants import IGNORE_INDEX
from mgm.data.dataset import BadSample

BAD_SAMPLES_KEY = "mgm_bad_samples"
EMPTY_BATCH_KEY = "mgm_empty_batch"


@dataclass
class DataCollatorForSupervisedDataset:
    """Pads token rows and concatenates image tensors (see module docstring)."""

    tokenizer: Any
    model_max_length: int | None = None

    def __call__(self, instances: Sequence[dict | BadSample]) -> dict[str, Any]:
        good = [x for x in instances if not isinstance(x, BadSample)]
        bad = [x for x in instances if isinstance(x, BadSample)]
        empty = not good
        if empty:
            if not bad or bad[0].placeholder is None:
                raise ValueError("cannot collate an empty batch")
            good = [bad[0].placeholder]
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token; the training set-up must assign one")
        limit = self.model_max_length
        ids = [x["input_ids"][:limit] if limit else x["input_ids"] for x in good]
        labels = [x["labels"][:limit] if limit else x["labels"] for x in good]
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        label_rows = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.bool)
        for r, (row, lab) in enumerate(zip(ids, labels)):
            input_ids[r, : len(row)] = row
            label_rows[r, : len(lab)] = lab
            mask[r, : len(row)] = True
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": label_rows, "attention_mask": mask}
        if "images" in good[0]:
            batch["images"] = torch.cat([x["images"] for x in good])
            if good[0].get("images_aux") is not None:
                batch["images_aux"] = torch.cat([x["images_aux"] for x in good])
        if bad:
            batch[BAD_SAMPLES_KEY] = [b.to_record() for b in bad]
        if empty:
            batch[EMPTY_BATCH_KEY] = True
        return batch
