"""The original `mgm/model/language_model/mgm_mistral.py` names; the classes are built in `mgm.model.families`.

As in the original, this module's config class is called `MGMConfig`.
"""
from mgm.model import MGMMistralConfig as MGMConfig, MGMMistralForCausalLM, MGMMistralModel

__all__ = ["MGMConfig", "MGMMistralModel", "MGMMistralForCausalLM"]
