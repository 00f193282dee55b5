"""MGM for lmms-eval: the model `mgm` (class `mgm.integrations.lmms_eval.model.MGM`).

lmms-eval finds it through the `lmms_eval.models` entry point that installing mgm registers, so
`lmms-eval --model mgm --model_args pretrained=<checkpoint> --tasks ...` works with no other set-up.
"""
from __future__ import annotations

MODEL_CLASS = "mgm.integrations.lmms_eval.model.MGM"


def manifest():
    """The entry point lmms-eval calls: a ModelManifest naming the `mgm` model class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="mgm", simple_class_path=MODEL_CLASS)
