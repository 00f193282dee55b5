"""Decoding as the original's slow sentencepiece tokenizer, for the families it loaded with `use_fast=False`.

The original builder loaded Llama-family and Mistral tokenizers with `use_fast=False`: transformers 4.36's
`LlamaTokenizer`, which turns ids into pieces and lets sentencepiece join them. Token ids are the same
with the tokenizers-backed tokenizer loaded today, but the text differs where an answer holds byte
pieces that are not valid UTF-8: sentencepiece replaces each invalid byte by U+FFFD and keeps the valid
ones (`<0xEB><0x14><0xE3>` -> "\\ufffd\\x14\\ufffd"), the `ByteFallback` decoder replaces the whole run
("\\ufffd\\ufffd\\ufffd"). `use_sentencepiece_decoding` gives a loaded tokenizer the original's `_decode`
(every `decode` / `batch_decode` / streamer goes through it); encoding is untouched.
"""
from __future__ import annotations

import json
from pathlib import Path

SPIECE_UNDERLINE = "\u2581"
SP_MODEL_FILE = "tokenizer.model"
# Families whose tokenizer the original builder loaded with use_fast=False (all but Gemma and Mixtral,
# whose checkpoints its name rules sent to the fast tokenizer).
SLOW_TOKENIZER_FAMILIES = ("llama", "mistral")


class SentencePieceDecode:
    """Callable installed as `tokenizer._decode`: transformers 4.36 `PreTrainedTokenizer._decode` +
    `LlamaTokenizer.convert_tokens_to_string` over the folder's sentencepiece model."""

    def __init__(self, tokenizer, model_proto: bytes, legacy: bool) -> None:
        self.tokenizer = tokenizer
        self.model_proto = model_proto
        self.legacy = legacy
        self._sp = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sp": None}  # the processor is rebuilt from the proto after unpickling

    @property
    def sp(self):
        if self._sp is None:
            import sentencepiece as spm

            proto = self.model_proto
            if not self.legacy:
                # As the original for `legacy: false`: the model without the dummy-prefix rule.
                from sentencepiece import sentencepiece_model_pb2

                model = sentencepiece_model_pb2.ModelProto.FromString(proto)
                model.normalizer_spec.add_dummy_prefix = False
                proto = model.SerializeToString()
            self._sp = spm.SentencePieceProcessor(model_proto=proto)
        return self._sp

    def tokens_to_string(self, tokens: list[str]) -> str:
        """Pieces (and special-token strings) -> text, the original `convert_tokens_to_string`."""
        special = set(self.tokenizer.all_special_tokens)
        tokens = list(tokens)
        if tokens[0].startswith(SPIECE_UNDERLINE):
            tokens[0] = tokens[0][1:]  # the prefix space added when encoding
        out, pieces, prev_special = "", [], False
        for i, token in enumerate(tokens):
            if token in special:
                if not prev_special and i != 0 and self.legacy:
                    out += " "
                out += self.sp.decode_pieces(pieces) + token
                pieces, prev_special = [], True
            else:
                pieces.append(token)
                prev_special = False
        return out + self.sp.decode_pieces(pieces)

    def __call__(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None,
                 spaces_between_special_tokens: bool = True, **kwargs) -> str:
        tok = self.tokenizer
        if isinstance(token_ids, dict):
            token_ids = token_ids["input_ids"]
        ids = [token_ids] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        n_pieces = self.sp.get_piece_size()
        special_ids = set(tok.all_special_ids)
        special_tokens = set(tok.all_special_tokens)
        extra_special = set(getattr(tok, "additional_special_tokens", None) or [])
        texts, run = [], []
        for i in ids:
            if skip_special_tokens and i in special_ids:
                continue
            token = self.sp.id_to_piece(i) if 0 <= i < n_pieces else tok.convert_ids_to_tokens(i)
            if token is None:
                continue
            # Tokens added on top of the sentencepiece vocabulary are joined as text of their own.
            if i >= n_pieces and (token not in special_tokens or token in extra_special):
                if run:
                    text = self.tokens_to_string(run)
                    if text:
                        texts.append(text)
                    run = []
                texts.append(token)
            else:
                run.append(token)
        if run:
            texts.append(self.tokens_to_string(run))
        text = (" " if spaces_between_special_tokens else "").join(texts)
        clean = tok.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return tok.clean_up_tokenization(text) if clean else text


def use_sentencepiece_decoding(tokenizer, folder: str | Path, family_key: str):
    """Give `tokenizer` the original's slow decoding when its family and folder call for it; returns it.

    Applies to the families in `SLOW_TOKENIZER_FAMILIES` whose tokenizer folder has `tokenizer.model`.
    """
    model_file = Path(folder) / SP_MODEL_FILE
    if family_key not in SLOW_TOKENIZER_FAMILIES or not model_file.is_file():
        return tokenizer
    # `legacy` as the folder states it; unset meant True to the original (transformers 4.36).
    config_file = Path(folder) / "tokenizer_config.json"
    legacy = json.loads(config_file.read_text()).get("legacy") if config_file.is_file() else None
    tokenizer._decode = SentencePieceDecode(tokenizer, model_file.read_bytes(), legacy is None or bool(legacy))
    return tokenizer
