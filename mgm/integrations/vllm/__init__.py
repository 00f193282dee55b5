"""Serve MGM checkpoints with vLLM: an out-of-tree model plugin (`vllm.general_plugins` entry point).

Installed with mgm in a vLLM environment (`scripts/setup_vllm_venv.sh`), `vllm serve <MGM folder>`
and `vllm.LLM(<MGM folder>)` load released checkpoints unchanged. vLLM calls `register()` in each
of its processes; it registers the MGM config classes with transformers, the model class under
every MGM architecture name, and a config parser that refuses bad checkpoints with mgm's messages.
Modules: `model` (the vLLM model), `processor` (prompt + image preprocessing), `vision` (mgm's
towers), `config` (parser, placeholder id), `engine` (an async vLLM engine for mgm's worker),
`tiny_zoo` (head_dim-32 test checkpoints).
"""
from __future__ import annotations

MODEL_CLASS = "mgm.integrations.vllm.model:MGMForConditionalGeneration"
_registered = False


def register() -> None:
    """The `vllm.general_plugins` entry point (idempotent; vLLM may call it several times)."""
    global _registered
    if _registered:
        return
    from vllm import ModelRegistry
    from vllm.transformers_utils.config import register_config_parser

    from mgm.integrations.vllm.config import build_config_parser, mgm_architectures
    from mgm.registration import register_auto_classes

    register_auto_classes()
    for architecture in sorted(mgm_architectures()):
        # a lazy "module:class" string: vLLM imports the model only where it builds it
        ModelRegistry.register_model(architecture, MODEL_CLASS)
    register_config_parser("hf")(build_config_parser())
    _registered = True
