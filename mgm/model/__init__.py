"""MGM model classes for every LLM family, registered with the transformers Auto classes on import.

Registration is what lets `AutoModelForCausalLM.from_pretrained(<MGM checkpoint>)` work, as it did
with the original package; it is idempotent and touches nothing else.
"""
from mgm.model.families import classes_for_model_type, family_classes
from mgm.registration import register_auto_classes

register_auto_classes()

_classes = family_classes()
MGMConfig, MGMLlamaModel, MGMLlamaForCausalLM = _classes["mgm"]
MGMGemmaConfig, MGMGemmaModel, MGMGemmaForCausalLM = _classes["mgm_gemma"]
MGMMistralConfig, MGMMistralModel, MGMMistralForCausalLM = _classes["mgm_mistral"]
MGMMixtralConfig, MGMMixtralModel, MGMMixtralForCausalLM = _classes["mgm_mixtral"]
MiniGeminiConfig, MiniGeminiLlamaModel, MiniGeminiLlamaForCausalLM = _classes["mini_gemini"]
MiniGeminiGemmaConfig, MiniGeminiGemmaModel, MiniGeminiGemmaForCausalLM = _classes["mini_gemini_gemma"]
MiniGeminiMistralConfig, MiniGeminiMistralModel, MiniGeminiMistralForCausalLM = _classes["mini_gemini_mistral"]
MiniGeminiMixtralConfig, MiniGeminiMixtralModel, MiniGeminiMixtralForCausalLM = _classes["mini_gemini_mixtral"]

__all__ = [name for name in dir() if name.startswith(("MGM", "MiniGemini"))] + ["classes_for_model_type"]
