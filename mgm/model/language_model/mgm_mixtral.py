"""The original `mgm/model/language_model/mgm_mixtral.py` names; the classes are built in `mgm.model.families`.

As in the original, this module's config class is called `MGMConfig`.
"""
from mgm.model import MGMMixtralConfig as MGMConfig, MGMMixtralForCausalLM, MGMMixtralModel

__all__ = ["MGMConfig", "MGMMixtralModel", "MGMMixtralForCausalLM"]
