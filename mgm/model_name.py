"""The display name of a checkpoint folder, as the original derived it from the path (workers, eval records)."""
from __future__ import annotations


def get_model_name_from_path(model_path: str) -> str:
    """Last path component; `.../run/checkpoint-N` -> `run_checkpoint-N`."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]
