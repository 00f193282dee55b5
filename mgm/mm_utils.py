"""The original `mgm.mm_utils` names: image preprocessing, image-token tokenisation, stopping criteria.

Image code lives in `mgm.data.image`; this module keeps the public names and signatures users import.
"""
from __future__ import annotations


import torch
from transformers import StoppingCriteria

from mgm.constants import IMAGE_TOKEN_INDEX
from mgm.data.image import ImageProcessor, expand2square, load_image_from_base64  # noqa: F401  (re-exported)


def process_images(images, image_processor, model_cfg):
    """PIL images -> pixel tensors; `image_aspect_ratio == 'pad'` pads to square with the mean colour first.

    Returns a stacked [N, 3, H, W] tensor when all shapes agree, else a list (as the original).
    """
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    if aspect == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        outs = [image_processor.preprocess(expand2square(im.convert("RGB"), background), return_tensors="pt")
                ["pixel_values"][0] for im in images]
    else:
        return image_processor(images, return_tensors="pt")["pixel_values"]
    if all(o.shape == outs[0].shape for o in outs):
        return torch.stack(outs, dim=0)
    return outs


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX, return_tensors=None):
    """Tokenise each `<image>`-separated chunk on its own, keep one leading BOS, put `image_token_index`
    where every `<image>` was (docs/original.md#tokenizer-image-token)."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    input_ids: list[int] = []
    offset = 0
    bos = getattr(tokenizer, "bos_token_id", None)
    if chunks and chunks[0] and bos is not None and chunks[0][0] == bos:
        offset = 1
        input_ids.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i > 0:
            input_ids.append(image_token_index)
        input_ids.extend(chunk[offset:])
    if return_tensors is not None:
        if return_tensors == "pt":
            return torch.tensor(input_ids, dtype=torch.long)
        raise ValueError(f"Unsupported tensor type: {return_tensors}")
    return input_ids


def get_model_name_from_path(model_path: str) -> str:
    """Last path component; `.../run/checkpoint-N` -> `run_checkpoint-N`."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop a row when its generated tail equals a keyword's ids or its decoded tail contains a keyword."""

    def __init__(self, keywords: list[str], tokenizer, input_ids: torch.Tensor) -> None:
        self.keywords = keywords
        self.tokenizer = tokenizer
        self.keyword_ids = []
        self.max_keyword_len = 0
        bos = getattr(tokenizer, "bos_token_id", None)
        for keyword in keywords:
            ids = tokenizer(keyword).input_ids
            if len(ids) > 1 and ids[0] == bos:
                ids = ids[1:]
            self.max_keyword_len = max(self.max_keyword_len, len(ids))
            self.keyword_ids.append(torch.tensor(ids))
        # With inputs_embeds generation the output holds only new tokens, so everything is "new".
        self.start_len = input_ids.shape[1] if input_ids is not None else 0

    def _row_done(self, row: torch.Tensor) -> bool:
        for ids in self.keyword_ids:
            ids = ids.to(row.device)
            if ids.numel() and row.shape[0] >= ids.shape[0] and torch.equal(row[-ids.shape[0]:], ids):
                return True
        tail = row[-min(row.shape[0], self.max_keyword_len + 3):]
        text = self.tokenizer.decode(tail, skip_special_tokens=False)
        return any(k in text for k in self.keywords)

    def __call__(self, output_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        done = [self._row_done(row) for row in output_ids]
        return torch.tensor(done, dtype=torch.bool, device=output_ids.device)
