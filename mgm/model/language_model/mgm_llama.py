"""The original `mgm/model/language_model/mgm_llama.py` names; the classes are built in `mgm.model.families`.

As in the original, this module's config class is called `MGMConfig`.
"""
from mgm.model import MGMConfig, MGMLlamaForCausalLM, MGMLlamaModel

__all__ = ["MGMConfig", "MGMLlamaModel", "MGMLlamaForCausalLM"]
