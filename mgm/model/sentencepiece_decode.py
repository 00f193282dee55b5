"""Decoding as the original's slow sentencepiece tokenizer, for the families it loaded with `use_fast=False`.

The original builder loaded Llama-family and Mistral tokenizers with `use_fast=False`: transformers 4.36's
`LlamaTokenizer`, which turns ids into pieces and lets sentencepiece join them. Token ids are the same
with the tokenizers-backed tokenizer loaded today, but the text differs where an answer holds byte
pieces that are not valid UTF-8: sentencepiece replaces each invalid byte by U+FFFD and keeps the valid
ones (`<0xEB><0x14><0xE3>` -> "\\ufffd\\x14\\ufffd"), the `ByteFallback` decoder replaces the whole run
("\\ufffd\\ufffd\\ufffd").

`SentencePieceDecodingTokenizer` is that behaviour as a named class: transformers' `LlamaTokenizer` for
encoding, the original's decoding for every `decode` / `batch_decode` / streamer. It saves its
sentencepiece model and `legacy` flag beside tokenizer.json, and `AutoTokenizer` (after
`mgm.register()`) loads a saved one back as this class. `load_tokenizer(folder, family)` is how mgm's
loaders get a checkpoint's tokenizer: this class for the families in `SLOW_TOKENIZER_FAMILIES` whose
folder has `tokenizer.model`, else what `AutoTokenizer` gives.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import LlamaTokenizer

SPIECE_UNDERLINE = "\u2581"
SP_MODEL_FILE = "tokenizer.model"
# Families whose tokenizer the original builder loaded with use_fast=False (all but Gemma and Mixtral,
# whose checkpoints its name rules sent to the fast tokenizer).
SLOW_TOKENIZER_FAMILIES = ("llama", "mistral")


class SentencePieceDecode:
    """`SentencePieceDecodingTokenizer._decode`: transformers 4.36 `PreTrainedTokenizer._decode` +
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


def _legacy_of(folder: Path) -> bool:
    """`legacy` as the folder's tokenizer_config.json states it; unset meant True to the original (4.36)."""
    config_file = folder / "tokenizer_config.json"
    data = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if LEGACY_KEY in data:
        return bool(data[LEGACY_KEY])
    legacy = data.get("legacy")
    return legacy is None or bool(legacy)


# The tokenizer_config.json key this class saves the original's `legacy` under (transformers' own
# `legacy` key means something else to today's LlamaTokenizer and is rewritten on save).
LEGACY_KEY = "sentencepiece_legacy"


class SentencePieceDecodingTokenizer(LlamaTokenizer):
    """LlamaTokenizer encoding + the original slow tokenizer's sentencepiece decoding (module docstring)."""

    vocab_files_names = {**LlamaTokenizer.vocab_files_names, "vocab_file": SP_MODEL_FILE}
    # each invalid byte piece becomes U+FFFD on its own (streaming need not wait for a byte run's end)
    decodes_bytes_alone = True

    def __init__(self, *args, vocab_file: str | None = None, **kwargs) -> None:
        legacy = kwargs.pop(LEGACY_KEY, None)
        super().__init__(*args, **kwargs)
        if vocab_file is None or not Path(vocab_file).is_file():
            raise ValueError(f"{type(self).__name__} needs the folder's {SP_MODEL_FILE} (sentencepiece model)")
        self.vocab_file = vocab_file
        if legacy is None:
            legacy = _legacy_of(Path(vocab_file).parent)
        self.init_kwargs[LEGACY_KEY] = bool(legacy)
        self.sentencepiece_decode = SentencePieceDecode(self, Path(vocab_file).read_bytes(), bool(legacy))

    def _decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None,
                **kwargs) -> str:
        return self.sentencepiece_decode(token_ids, skip_special_tokens=skip_special_tokens,
                                         clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        target = Path(save_directory) / ((filename_prefix + "-" if filename_prefix else "") + SP_MODEL_FILE)
        target.write_bytes(self.sentencepiece_decode.model_proto)
        return (str(target),)

    def save_pretrained(self, save_directory, *args, **kwargs):
        files = tuple(super().save_pretrained(save_directory, *args, **kwargs))
        # the sentencepiece model is what decoding runs on: it travels with the tokenizer
        if not (Path(save_directory) / SP_MODEL_FILE).is_file():
            files += self.save_vocabulary(str(save_directory))
        return files



def uses_sentencepiece_decoding(folder: str | Path, family_key: str) -> bool:
    """True when the original decoded this family's tokenizer slowly and the folder has its sentencepiece model."""
    return family_key in SLOW_TOKENIZER_FAMILIES and (Path(folder) / SP_MODEL_FILE).is_file()


def load_tokenizer(folder: str | Path, family_key: str, **kwargs):
    """The tokenizer of a checkpoint folder as mgm decodes it: `SentencePieceDecodingTokenizer` where the
    original decoded with sentencepiece (`uses_sentencepiece_decoding`), else `AutoTokenizer`'s."""
    if uses_sentencepiece_decoding(folder, family_key):
        return SentencePieceDecodingTokenizer.from_pretrained(str(folder), **kwargs)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), **kwargs)
