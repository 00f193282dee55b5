"""Hugging Face processing for MGM: `MGMProcessor`, `MGMImageProcessor` and the chat templates.

`register_processor_classes()` makes `AutoProcessor` / `AutoImageProcessor` return them for every MGM
config class; `mgm.registration.register_auto_classes` calls it, so `import mgm` is enough.
"""
from mgm.processing.chat_templates import all_chat_templates, chat_template_for
from mgm.processing.image_processor import MGMImageProcessor
from mgm.processing.processor import MGMProcessor

__all__ = ["MGMProcessor", "MGMImageProcessor", "all_chat_templates", "chat_template_for",
           "register_processor_classes"]


def register_processor_classes(config_classes) -> None:
    """Register MGMProcessor / MGMImageProcessor for each MGM config class (idempotent)."""
    from transformers import AutoImageProcessor, AutoProcessor

    for config_cls in config_classes:
        AutoProcessor.register(config_cls, MGMProcessor, exist_ok=True)
        AutoImageProcessor.register(config_cls, image_processor_classes={
            "pil": MGMImageProcessor, "torchvision": MGMImageProcessor}, exist_ok=True)
