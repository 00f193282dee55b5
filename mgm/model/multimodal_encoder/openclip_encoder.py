"""The original `mgm/model/multimodal_encoder/openclip_encoder.py` name: the high-resolution ConvNeXt tower."""
from mgm.model.vision.convnext import ConvNeXtTower as OpenCLIPVisionTower

__all__ = ["OpenCLIPVisionTower"]
