"""The original `mgm/model/multimodal_projector/builder.py` names (thin re-exports of `mgm.model.projector`).

`build_vision_projector(config)` reads `mm_projector_type`, `mm_hidden_size` and `hidden_size` from a
model config, as the original did.
"""
from mgm.model.projector import IdentityMap, SimpleResBlock
from mgm.model.projector import projector_from_config as build_vision_projector

__all__ = ["build_vision_projector", "IdentityMap", "SimpleResBlock"]
