"""MGM model classes for every LLM family, registered with the transformers Auto classes on first use.

Registration is what lets `AutoModelForCausalLM.from_pretrained(<MGM checkpoint>)` work, as it did
with the original package; it is idempotent and touches nothing else. The class names below are built
on first access (PEP 562): importing a light submodule such as `mgm.model.export` for its `--help` runs
this file too, and must not load torch and four transformers families (seconds).
"""
from __future__ import annotations

from typing import Any

# model_type -> (config, base model, causal LM) class names, as the original package exported them
_NAMES = {
    "mgm": ("MGMConfig", "MGMLlamaModel", "MGMLlamaForCausalLM"),
    "mgm_gemma": ("MGMGemmaConfig", "MGMGemmaModel", "MGMGemmaForCausalLM"),
    "mgm_mistral": ("MGMMistralConfig", "MGMMistralModel", "MGMMistralForCausalLM"),
    "mgm_mixtral": ("MGMMixtralConfig", "MGMMixtralModel", "MGMMixtralForCausalLM"),
    "mini_gemini": ("MiniGeminiConfig", "MiniGeminiLlamaModel", "MiniGeminiLlamaForCausalLM"),
    "mini_gemini_gemma": ("MiniGeminiGemmaConfig", "MiniGeminiGemmaModel", "MiniGeminiGemmaForCausalLM"),
    "mini_gemini_mistral": ("MiniGeminiMistralConfig", "MiniGeminiMistralModel", "MiniGeminiMistralForCausalLM"),
    "mini_gemini_mixtral": ("MiniGeminiMixtralConfig", "MiniGeminiMixtralModel", "MiniGeminiMixtralForCausalLM"),
}
_WHERE = {name: (model_type, i) for model_type, names in _NAMES.items() for i, name in enumerate(names)}

__all__ = sorted(_WHERE) + ["classes_for_model_type"]


def __getattr__(name: str) -> Any:
    if name == "classes_for_model_type":
        from mgm.model.families import classes_for_model_type

        return classes_for_model_type
    if name not in _WHERE:
        raise AttributeError(f"module 'mgm.model' has no attribute {name!r}")
    from mgm.model.families import family_classes
    from mgm.registration import register_auto_classes

    register_auto_classes()
    model_type, index = _WHERE[name]
    return family_classes()[model_type][index]
