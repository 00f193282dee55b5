"""The original `mgm/model/multimodal_encoder/clip_encoder.py` name: the low-resolution CLIP tower."""
from mgm.model.vision.clip import CLIPVisionTower

__all__ = ["CLIPVisionTower"]
