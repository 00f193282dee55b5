"""Which conversation template a model uses by default, decided once from its config (and tokenizer).

`mgm.conversation` re-exports `resolve_template` / `template_for_model_config`, the names callers use.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_LLAMA3_BOS_ID = 128000
_LLAMA3_MIN_VOCAB = 128000
_YI_VOCAB = 64000  # Yi-34B (MGM-34B) vocabulary size; used only when no tokenizer is given


def _config_get(config: Any, key: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def _tokenizer_has(tokenizer: Any, token: str) -> bool:
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # a tokenizer-like object without get_vocab: treat as unknown
        return False
    return token in vocab


def resolve_template(config: Any, tokenizer: Any = None) -> str:
    """The default conversation template name for a model, decided once from its config (not its name).

    - the template a checkpoint recorded (config key `conv_template`, e.g. "chat_template") decides first;
    - a family row with a `default_template` (mgm.model.families) decides: gemma → "gemma",
      mistral / mixtral (MGM, legacy `mini_gemini_*` and base model types) → "mistral_instruct";
    - otherwise (the llama family, an unknown model_type) the vocabulary: "llama_3" when the model is
      LLaMA-3 (vocab_size >= 128000, bos_token_id 128000, or the tokenizer knows `<|eot_id|>`);
      "chatml_direct" when the tokenizer knows `<|im_start|>` (Yi; without a tokenizer a vocabulary of
      exactly 64000 is taken as Yi); else "vicuna_v1".

    `config` may be a transformers config or a plain dict (e.g. a parsed config.json).
    """
    recorded = _config_get(config, "conv_template")  # what the checkpoint was trained with decides first
    if recorded:
        return str(recorded)
    model_type = str(_config_get(config, "model_type") or "").lower()
    from mgm.model.families import find_family_for_llm  # the family table decides first

    family = find_family_for_llm(model_type) if model_type else None
    if family is not None and family.default_template:
        return family.default_template
    vocab_size = _config_get(config, "vocab_size") or 0
    if (
        vocab_size >= _LLAMA3_MIN_VOCAB
        or _config_get(config, "bos_token_id") == _LLAMA3_BOS_ID
        or (tokenizer is not None and _tokenizer_has(tokenizer, "<|eot_id|>"))
    ):
        return "llama_3"
    if tokenizer is not None:
        if _tokenizer_has(tokenizer, "<|im_start|>"):
            return "chatml_direct"
    elif vocab_size == _YI_VOCAB:
        return "chatml_direct"
    return "vicuna_v1"


# The name existing call sites use (serve CLI, model worker, eval CLI, tests).
template_for_model_config = resolve_template
