"""The original `mgm.mm_utils` names, kept for code written against the original package (thin re-exports).

Nothing inside `mgm` imports this module: image code lives in `mgm.data.image`, the prompt tokenisation in
`mgm.data.prompt_ids`, the keyword stop rule in `mgm.inference.stopping`, the model name in `mgm.model_name`.
"""
from mgm.data.image import ImageProcessor, expand2square, load_image_from_base64, process_images
from mgm.data.prompt_ids import tokenizer_image_token
from mgm.inference.stopping import KeywordsStoppingCriteria
from mgm.model_name import get_model_name_from_path

__all__ = ["ImageProcessor", "KeywordsStoppingCriteria", "expand2square", "get_model_name_from_path",
           "load_image_from_base64", "process_images", "tokenizer_image_token"]
