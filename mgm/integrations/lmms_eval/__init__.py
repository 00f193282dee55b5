"""MGM for lmms-eval: the model `mgm` (class `mgm.integrations.lmms_eval.model.MGM`).

lmms-eval finds it through the `lmms_eval.models` entry point that installing mgm registers, so
`lmms-eval --model mgm --model_args pretrained=<checkpoint> --tasks ...` works with no other set-up.
`python -m mgm.integrations.lmms_eval.run` is lmms-eval's own CLI with an honest exit status
(lmms-eval exits 0 when a task or its data is not found).
"""
from __future__ import annotations

MODEL_ID = "mgm"
MODEL_CLASS = "mgm.integrations.lmms_eval.model.MGM"


def manifest():
    """The entry point lmms-eval calls while it builds its model registry: a ModelManifest for `mgm`.

    `lmms-eval models` lists only the names in `lmms_eval.models.AVAILABLE_SIMPLE_MODELS` (its plugin
    table, which its LMMS_EVAL_PLUGINS mechanism also fills with class paths), not the registry that
    resolves `--model`; `mgm` is added there too so that the listing shows it. Nothing is changed
    when the table already names a model `mgm`.
    """
    from importlib import import_module

    from lmms_eval.models.registry_v2 import ModelManifest

    # import_module hands back the module lmms-eval is still initialising (this runs inside its import)
    listed = getattr(import_module("lmms_eval.models"), "AVAILABLE_SIMPLE_MODELS", None)
    if isinstance(listed, dict):
        listed.setdefault(MODEL_ID, MODEL_CLASS)
    return ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS)
