"""Checkpoint-level glue between MGM folders and vLLM: config parsing, the image placeholder id.

vLLM reads `config.json` through a config parser before any model code runs, so an MGM checkpoint
that mgm's loader would refuse must be refused there, with mgm's message: `MGMConfigParser` is vLLM's
Hugging Face parser plus that check for configs whose architecture is an MGM one (unknown
`model_type`, bad MGM keys, a tower that cannot be found).

The placeholder: mgm marks each image with the out-of-vocabulary id -200 (`IMAGE_TOKEN_INDEX`);
vLLM needs an in-vocabulary id there (its renderer rejects others) and the expanded run of one
placeholder per image feature. Which id does not change the answer (those positions get image
features), only that plain text never produces it: `image_placeholder_id` takes the config's
`image_token_index` if set (vLLM's `--hf-overrides`), else the tokenizer's pad or unk token.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

from mgm.errors import UserError


@cache
def mgm_architectures() -> frozenset[str]:
    """Every `architectures[0]` an MGM checkpoint may carry (MGM*ForCausalLM and MiniGemini*ForCausalLM)."""
    from mgm.model.families import family_classes

    return frozenset(causal.__name__ for _, _, causal in family_classes().values())


def local_checkpoint_dir(model: str, revision: str | None = None) -> str:
    """The local folder of `model` (a folder, or a hub id already in / fetched into the HF cache)."""
    if Path(model).is_dir():
        return str(Path(model))
    from huggingface_hub import snapshot_download

    return snapshot_download(model, revision=revision)


def image_placeholder_id(config, tokenizer) -> int:
    """The in-vocabulary token id that stands for image features in vLLM prompts (see module doc)."""
    vocab = int(config.vocab_size)
    explicit = getattr(config, "image_token_index", None)
    if explicit is not None:
        if not 0 <= int(explicit) < vocab:
            raise UserError(f"image_token_index={explicit} is outside the vocabulary (0..{vocab - 1})")
        return int(explicit)
    eos = tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id):
        if candidate is not None and candidate not in eos_ids and 0 <= candidate < vocab:
            return int(candidate)
    raise UserError("the tokenizer has neither a pad nor an unk token to stand for image features; pick an "
                    "unused token id and pass it as --hf-overrides '{\"image_token_index\": ID}'")


def build_config_parser():
    """vLLM's HF config parser class with mgm's checkpoint checks (vLLM imported here, not at import)."""
    from vllm.transformers_utils.config import HFConfigParser

    class MGMConfigParser(HFConfigParser):
        """HF parsing; for MGM architectures, mgm's checks first (same errors as load_pretrained_model)."""

        def parse(self, model, trust_remote_code, revision=None, code_revision=None, **kwargs):
            import json

            folder = Path(model)
            raw = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
            if set(raw.get("architectures") or ()) & mgm_architectures():
                from mgm.model.families import classes_for_model_type

                classes_for_model_type(raw.get("model_type") or "")  # unknown family: mgm's message
            config_dict, config = super().parse(model, trust_remote_code, revision=revision,
                                                code_revision=code_revision, **kwargs)
            if set(config.architectures or ()) & mgm_architectures():
                from mgm.integrations.vllm.vision import check_checkpoint_config

                check_checkpoint_config(config)
            return config_dict, config

    return MGMConfigParser
