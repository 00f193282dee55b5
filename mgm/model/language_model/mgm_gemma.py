"""The original `mgm/model/language_model/mgm_gemma.py` names; the classes are built in `mgm.model.families`.

As in the original, this module's config class is called `MGMConfig`.
"""
from mgm.model import MGMGemmaConfig as MGMConfig, MGMGemmaForCausalLM, MGMGemmaModel

__all__ = ["MGMConfig", "MGMGemmaModel", "MGMGemmaForCausalLM"]
