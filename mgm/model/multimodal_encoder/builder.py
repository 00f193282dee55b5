"""The original `mgm/model/multimodal_encoder/builder.py` names (thin re-exports of `mgm.model.vision.from_config`)."""
from mgm.model.vision.from_config import build_vision_tower, build_vision_tower_aux

__all__ = ["build_vision_tower", "build_vision_tower_aux"]
