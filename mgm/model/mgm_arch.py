"""The original `mgm/model/mgm_arch.py` names: the mixins every MGM model class is built from."""
from mgm.model.arch import MGMMetaForCausalLM, MGMMetaModel

__all__ = ["MGMMetaModel", "MGMMetaForCausalLM"]
