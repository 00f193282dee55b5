"""Pad-token and template choice per `--version`, exactly as the original training did (docs/original.md#training).

The tokenizer is saved with every checkpoint, so these choices are inherited by inference: keep them.

| --version          | template                                | tokenizer change                                 |
|--------------------|-----------------------------------------|--------------------------------------------------|
| `v0`               | vicuna_v1 (the original default)        | add `[PAD]` if there is no pad (resize embeddings)|
| `v0.5`             | vicuna_v1 (the original default)        | pad = unk                                        |
| contains `gemma`   | the version's template, else `gemma`    | none (Gemma has its own `<pad>`)                 |
| contains `llama_3` | the version's template, else `llama_3`  | unk = `<|reserved_special_token_0|>` if none; pad = unk |
| `chat_template`    | the tokenizer's own Jinja chat template | pad kept; else unk; else `<|mgm_pad|>` added      |
| `plain`            | plain                                   | pad = unk; with neither: `<|mgm_pad|>` added      |
| anything else      | the version's template, else vicuna_v1  | pad = unk                                        |

`padding_side` is always "right" (the original passed it when loading the tokenizer).

`image_token_groups` / `add_image_tokens`: the `<im_patch>` and `<im_start>`/`<im_end>` tokens an MGM
config asks for, added by the loaders, the processor and training alike.
"""
from __future__ import annotations

import warnings
from typing import Any

from mgm.chat_template_conversation import CHAT_TEMPLATE, JinjaConversation
from mgm.conversation import conv_templates
from mgm.errors import UserError

__all__ = ["add_image_tokens", "image_token_groups", "setup_tokenizer_for_version", "LLAMA3_UNK_TOKEN",
           "V0_PAD_TOKEN"]

LLAMA3_UNK_TOKEN = "<|reserved_special_token_0|>"
V0_PAD_TOKEN = "[PAD]"
CHAT_TEMPLATE_PAD = "<|mgm_pad|>"
_FALLBACK_TEMPLATE = "vicuna_v1"  # the original module default `default_conversation`


def _pad_with_unk(tokenizer: Any, version: str) -> None:
    """pad = unk. A tokenizer without unk keeps its pad (the original would have set pad to None and
    then failed in the collator); without either we stop with a clear message."""
    if tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    elif tokenizer.pad_token is None:
        raise UserError(
            f"--version {version!r} pads with the unk token, but tokenizer {getattr(tokenizer, 'name_or_path', '')!r} "
            "has neither an unk nor a pad token; use a --version that matches the model family "
            "(e.g. llama_3, gemma, v0)")


def setup_tokenizer_for_version(tokenizer: Any, version: str) -> tuple[Any, str, bool]:
    """Apply the original `--version` rules to `tokenizer` (in place) and choose the template.

    Args:
        tokenizer: a Hugging Face tokenizer, freshly loaded for training.
        version: the `--version` training flag (e.g. "v1", "plain", "llama_3", "gemma", "chatml_direct").

    Returns:
        (tokenizer, template_name, added_tokens): `added_tokens` is True when tokens were added to the
        vocabulary (`[PAD]` for v0, or the LLaMA-3 unk token when it is not in the vocabulary); the
        caller must then resize the model embeddings (the original initialised new rows to the mean of
        the old input and output rows).
    """
    tokenizer.padding_side = "right"
    added = False
    if version == CHAT_TEMPLATE:
        JinjaConversation.from_tokenizer(tokenizer)  # UserError now when the tokenizer has no template
        if tokenizer.pad_token is None:
            if tokenizer.unk_token is not None:
                tokenizer.pad_token = tokenizer.unk_token
            else:  # not EOS: the collator's attention mask would hide every EOS the model must learn
                added = tokenizer.add_special_tokens({"pad_token": CHAT_TEMPLATE_PAD}) > 0
        template = CHAT_TEMPLATE
    elif version == "v0":
        if tokenizer.pad_token is None:
            added = tokenizer.add_special_tokens({"pad_token": V0_PAD_TOKEN}) > 0
        template = _FALLBACK_TEMPLATE
    elif version == "v0.5":
        _pad_with_unk(tokenizer, version)
        template = _FALLBACK_TEMPLATE
    elif "gemma" in version:
        template = version if version in conv_templates else "gemma"
    elif "llama_3" in version:
        if tokenizer.unk_token is None:
            if LLAMA3_UNK_TOKEN in tokenizer.get_vocab():
                tokenizer.unk_token = LLAMA3_UNK_TOKEN
            else:  # not a real LLaMA-3 vocabulary: add the token so unk/pad get an id
                added = tokenizer.add_special_tokens({"unk_token": LLAMA3_UNK_TOKEN}) > 0
        tokenizer.pad_token = tokenizer.unk_token
        template = version if version in conv_templates else "llama_3"
    else:
        if version == "plain" and tokenizer.unk_token is None and tokenizer.pad_token is None:
            # stage 1 of any LLM (Llama 3.x has neither): a pad of its own, as for chat_template
            added = tokenizer.add_special_tokens({"pad_token": CHAT_TEMPLATE_PAD}) > 0
        _pad_with_unk(tokenizer, version)
        if version in conv_templates:
            template = version
        else:
            # The original fell back silently; a typo (e.g. "llama3") would then train on the wrong format.
            warnings.warn(f"--version {version!r} is not a conversation template; using {_FALLBACK_TEMPLATE!r}",
                          stacklevel=2)
            template = _FALLBACK_TEMPLATE
    return tokenizer, template, added


def image_token_groups(use_patch_token: bool, use_start_end: bool) -> list[tuple[str, ...]]:
    """The image tokens a model adds, in the order and groups the original added them (training grows
    the embeddings after each group: `<im_patch>` zero-initialised, `<im_start>`/`<im_end>` mean-initialised)."""
    from mgm.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN

    groups: list[tuple[str, ...]] = []
    if use_patch_token:
        groups.append((DEFAULT_IMAGE_PATCH_TOKEN,))
    if use_start_end:
        groups.append((DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN))
    return groups


def add_image_tokens(tokenizer: Any, config: Any) -> None:
    """Add the image tokens an MGM config asks for to `tokenizer` (none without a vision tower); idempotent."""
    from mgm.model.settings import MGMSettings

    s = MGMSettings.from_config(config)
    if not s.vision_tower:
        return
    for group in image_token_groups(s.mm_use_im_patch_token, s.mm_use_im_start_end):
        tokenizer.add_tokens(list(group), special_tokens=True)
