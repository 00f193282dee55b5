"""`MGMProcessor`: tokenizer + `MGMImageProcessor` + every MGM chat template, as one HF processor.

`processor(text=prompts, images=images)` returns what MGM's `generate`/`forward` take:
`input_ids` (each `<image>` is one IMAGE_TOKEN_INDEX id, chunks tokenised as `tokenizer_image_token`
does), `attention_mask`, `images` and `images_aux` (one entry per `<image>`, in prompt order; a
text-only prompt in a batch with images gets the zero views of a text-only sample, as the engine
does). Several images per prompt are fine: pass a flat list (taken in `<image>` order) or one list
per prompt.

`from_pretrained` reads a saved processor (`processor_config.json`), or builds one from a plain MGM
checkpoint folder (config.json + tokenizer + the CLIP tower folder the config names). Chat templates:
one per conversation template (`processor.chat_template[name]`), `"default"` being the one the
model's config implies (`mgm.conversation.template_for_model_config`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from mgm.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from mgm.errors import UserError
from mgm.data.prompt_ids import tokenizer_image_token
from mgm.profile import pad_id_for
from mgm.processing.chat_templates import all_chat_templates
from mgm.processing.image_processor import MGMImageProcessor, as_pil

# Keyword arguments HF callers (pipeline, apply_chat_template) pass that need no action here.
_IGNORED_KWARGS = frozenset({"truncation", "max_length", "return_mm_token_type_ids", "return_text_replacement_offsets",
                             "sanitize_control_tokens", "return_attention_mask"})


class _NoSpecialTokens:
    """Tokenizer view adding no special tokens (for prompts that already carry them)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.bos_token_id = tokenizer.bos_token_id

    def __call__(self, text):
        return self.tokenizer(text, add_special_tokens=False)


class MGMProcessor(ProcessorMixin):
    """Text + images -> MGM model inputs; decoding skips image placeholders."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Save as transformers does; in a model folder (one with config.json) without the class names."""
        files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        if (Path(save_directory) / "config.json").is_file():
            drop_class_names(Path(save_directory), tokenizer_too=True)
        return files

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "images", "images_aux"]

    # -- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """A saved processor folder, or a plain MGM checkpoint folder (built from its config)."""
        folder = Path(pretrained_model_name_or_path)
        saved = folder / "processor_config.json"
        saved_dict = json.loads(saved.read_text()) if saved.is_file() else {}
        if "image_processor" in saved_dict and saved_dict.get("processor_class") in (None, cls.__name__):
            processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        elif folder.is_dir():
            processor = cls.from_checkpoint(folder, **kwargs)
        else:
            processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        config = read_model_config(folder) if folder.is_dir() else None
        if config is not None:
            from mgm.data.tokenizer_setup import add_image_tokens
            from mgm.profile import profile_for_checkpoint

            from mgm.model.families import family_for_llm
            from mgm.model.sentencepiece_decode import SentencePieceDecodingTokenizer, uses_sentencepiece_decoding

            if (uses_sentencepiece_decoding(folder, family_for_llm(config.model_type).key)
                    and not isinstance(processor.tokenizer, SentencePieceDecodingTokenizer)):
                # a folder naming transformers' LlamaTokenizer: decode as mgm's loader does (one decoder)
                processor.tokenizer = SentencePieceDecodingTokenizer.from_pretrained(
                    str(folder), chat_template=processor.tokenizer.chat_template)
            add_image_tokens(processor.tokenizer, config)
            if getattr(processor, "profile", None) is None:
                processor.profile = profile_for_checkpoint(folder, config, processor.tokenizer,
                                                           processor.image_processor)
        if processor.tokenizer.chat_template != processor.chat_template:
            processor.tokenizer.chat_template = processor.chat_template  # one template set for both
        return processor

    @classmethod
    def from_checkpoint(cls, folder: str | Path, **kwargs) -> "MGMProcessor":
        """Build the processor of a checkpoint folder in mgm's layout (no processor files needed)."""
        from mgm.chat_template_conversation import CHAT_TEMPLATE, hf_chat_template
        from mgm.profile import profile_for_checkpoint

        folder = Path(folder)
        config = read_model_config(folder)
        if config is None:
            raise UserError(f"{folder} has no MGM config.json: cannot build an MGM processor for it")
        from mgm.model.families import family_for_llm
        from mgm.model.sentencepiece_decode import load_tokenizer

        tokenizer_kwargs = {k: v for k, v in kwargs.items() if k in ("padding_side", "revision")}
        tokenizer = load_tokenizer(folder, family_for_llm(config.model_type).key, **tokenizer_kwargs)
        image_processor = MGMImageProcessor.from_model_config(config, folder)
        profile = profile_for_checkpoint(folder, config, tokenizer, image_processor)
        if profile.template == CHAT_TEMPLATE:  # the LLM's own Jinja template the checkpoint was trained with
            templates = all_chat_templates(None, profile.image_prefix)
            templates["default"] = hf_chat_template(profile.conversation())
        else:
            templates = all_chat_templates(profile.template, profile.image_prefix)
        tokenizer.chat_template = dict(templates)  # tokenizer.apply_chat_template renders the same way
        processor = cls(image_processor, tokenizer, chat_template=templates)
        processor.profile = profile
        return processor

    # -- encoding -----------------------------------------------------------------------------------
    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs) -> BatchFeature:
        """Prompts (with `<image>` tags) and their images -> input_ids, attention_mask, images(, images_aux)."""
        if videos is not None or audio is not None:
            raise ValueError("MGMProcessor takes text and images only")
        for group in ("text_kwargs", "images_kwargs", "common_kwargs"):
            kwargs.update(kwargs.pop(group, None) or {})
        return_tensors = kwargs.pop("return_tensors", None)
        padding = kwargs.pop("padding", False)
        padding_side = kwargs.pop("padding_side", None) or self.tokenizer.padding_side
        add_special_tokens = kwargs.pop("add_special_tokens", True)
        unknown = set(kwargs) - _IGNORED_KWARGS
        if unknown:
            raise TypeError(f"MGMProcessor got unexpected arguments {sorted(unknown)}; valid: return_tensors, "
                            "padding, padding_side, add_special_tokens (with a pipeline, generation options go "
                            "in generate_kwargs={...})")
        if text is None:
            raise ValueError("MGMProcessor needs `text`: a prompt with one <image> tag per image")
        texts = [text] if isinstance(text, str) else list(text)
        per_prompt = self._images_per_prompt(images, texts)

        tok = self.tokenizer if add_special_tokens else _NoSpecialTokens(self.tokenizer)
        rows = [tokenizer_image_token(t, tok, IMAGE_TOKEN_INDEX) for t in texts]
        data: dict = {}
        if return_tensors is not None or padding not in (False, None, "do_not_pad") or len(rows) == 1:
            data.update(self._pad(rows, padding_side, as_tensors=return_tensors is not None))
        else:
            data.update(input_ids=rows, attention_mask=[[1] * len(r) for r in rows])
        if any(per_prompt):
            # one block per <image>; a text-only row consumes one zero block, keeping rows and blocks aligned
            blocks = [im for ims in per_prompt for im in (ims or [None])]
            lr, hr = self.image_processor.views(blocks)
            data["images"] = lr
            if hr is not None:
                data["images_aux"] = hr
        return BatchFeature(data, tensor_type=return_tensors)

    def _images_per_prompt(self, images, texts: list[str]) -> list[list]:
        """The images of each prompt, checked against its `<image>` tags."""
        counts = [t.count(DEFAULT_IMAGE_TOKEN) for t in texts]
        if images is None:
            images = []
        images = self.image_processor.fetch_images(images)
        if not isinstance(images, (list, tuple)):
            images = [images]
        nested = len(images) > 0 and all(isinstance(x, (list, tuple)) for x in images)
        if nested:
            if len(images) != len(texts):
                raise ValueError(f"got {len(images)} image lists for {len(texts)} prompts")
            per_prompt = [list(x) for x in images]
        else:
            if len(images) != sum(counts):
                raise ValueError(f"the prompts have {sum(counts)} {DEFAULT_IMAGE_TOKEN} tags but {len(images)} images "
                                 "were given (one tag per image)")
            it = iter(images)
            per_prompt = [[next(it) for _ in range(n)] for n in counts]
        for i, (ims, n) in enumerate(zip(per_prompt, counts)):
            if len(ims) != n:
                raise ValueError(f"prompt {i} has {n} {DEFAULT_IMAGE_TOKEN} tags but {len(ims)} images")
        return [[as_pil(im) for im in ims] for ims in per_prompt]

    def _pad(self, rows: list[list[int]], side: str, as_tensors: bool) -> dict:
        tok = self.tokenizer
        profile = getattr(self, "profile", None)
        pad_id = profile.pad_id if profile is not None else pad_id_for(tok, [i for i in [tok.eos_token_id] if i is not None])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return {"input_ids": ids, "attention_mask": mask} if as_tensors else {
            "input_ids": ids.tolist(), "attention_mask": mask.tolist()}

    # -- decoding -----------------------------------------------------------------------------------
    def batch_decode(self, sequences, **kwargs) -> list[str]:
        """Decode rows of ids; image placeholders (negative ids) are dropped."""
        return [self.decode(row, **kwargs) for row in sequences]

    def decode(self, token_ids, **kwargs) -> str:
        """Decode one row of ids; image placeholders (negative ids) are dropped."""
        ids = token_ids.tolist() if hasattr(token_ids, "tolist") else list(token_ids)
        return self.tokenizer.decode([i for i in ids if i >= 0], **kwargs)  # the profile's decoder: same tokenizer

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        """Text of generated ids: a list for a batch [B, T], a string for one row [T]."""
        ids = generated_outputs.tolist() if hasattr(generated_outputs, "tolist") else generated_outputs
        if ids and isinstance(ids[0], list):
            return self.batch_decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)
        return self.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)


def read_model_config(folder: Path):
    """The folder's MGM config (via the registered config classes), or None if it has none."""
    from mgm.model.families import classes_for_model_type

    file = folder / "config.json"
    if not file.is_file():
        return None
    model_type = json.loads(file.read_text()).get("model_type")
    try:
        config_cls = classes_for_model_type(model_type)[0]
    except UserError:
        return None
    return config_cls.from_pretrained(str(folder))



def drop_class_names(folder: Path, tokenizer_too: bool = False) -> None:
    """Remove the class names from a model folder's processor_config.json (and tokenizer_config.json).

    The Auto classes then resolve the processor from config.json's model type, and that lookup is what
    registers the MGM classes after a bare `import mgm`; a class name would be looked up (and missed)
    before anything registers them.
    """
    file = folder / "processor_config.json"
    data = json.loads(file.read_text())
    data.pop("processor_class", None)
    if isinstance(data.get("image_processor"), dict):
        data["image_processor"].pop("image_processor_type", None)
    file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tokenizer_file = folder / "tokenizer_config.json"
    if tokenizer_too and tokenizer_file.is_file():
        data = json.loads(tokenizer_file.read_text())
        if data.pop("processor_class", None) is not None:
            tokenizer_file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
