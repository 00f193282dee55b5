"""MGM for VLMEvalKit: the model class `mgm.integrations.vlmevalkit.model.MGM` and its registration.

VLMEvalKit finds models by name in `vlmeval.config.supported_VLM` (its run.py and `infer_data_job`)
and, for `--config` files, by class name in `vlmeval.vlm`. `register(name, model_path, ...)` adds
an entry for one checkpoint to the first and the class (as `MGM`) to the second; the launcher
`python -m mgm.integrations.vlmevalkit.run --mgm NAME=PATH ... --data ... --model NAME` does that and
then runs VLMEvalKit's own run.py.
"""
from __future__ import annotations

from typing import Any

MODEL_CLASS = "mgm.integrations.vlmevalkit.model.MGM"


def expose_class() -> type:
    """Put the class into `vlmeval.vlm` as `MGM`, so `"class": "MGM"` works in a run.py --config file."""
    import vlmeval.vlm

    from mgm.integrations.vlmevalkit.model import MGM

    vlmeval.vlm.MGM = MGM
    return MGM


def register(name: str, model_path: str, **kwargs: Any) -> None:
    """Make `name` a VLMEvalKit model: `MGM(model_path=model_path, **kwargs)` (conv_mode, device,
    max_new_tokens, temperature, ...), built when VLMEvalKit first needs it."""
    from functools import partial

    import vlmeval.config

    vlmeval.config.supported_VLM[name] = partial(expose_class(), model_path=model_path, **kwargs)
