"""Tiny tokenizers trained locally, one per LLM family MGM was released with.

Each tokenizer is trained in well under a second on a small built-in English corpus (sentences drawn
from word lists that cover the MGM template words, colours, shapes, digits and punctuation) and saved
in the on-disk form the released base LLM used, so `AutoTokenizer.from_pretrained(dir)` loads it
offline and maps every special token of the family to a single id:

| kind      | model        | files                                        | bos / eos / unk / pad           |
|-----------|--------------|----------------------------------------------|---------------------------------|
| `vicuna`  | SentencePiece BPE, byte fallback, dummy prefix | tokenizer.model (no tokenizer.json, as lmsys/vicuna-7b-v1.5) | `<s>`=1 / `</s>`=2 / `<unk>`=0 / none; `legacy` false |
| `mistral` | same as vicuna, `[INST]` stays plain text | tokenizer.model + tokenizer.json | as vicuna; `legacy` true (Mistral v0.1) |
| `gemma`   | SentencePiece BPE, no dummy prefix | tokenizer.model + tokenizer.json | `<bos>`=2 / `<eos>`=1 / `<unk>`=3 / `<pad>`=0; `<start_of_turn>`, `<end_of_turn>` special |
| `llama3`  | byte-level BPE (tiktoken-like split) | tokenizer.json only | `<|begin_of_text|>` (post-processor) / `<|end_of_text|>`; `<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>`, reserved 0..5 |
| `yi`      | SentencePiece BPE + ChatML tokens | tokenizer.model + tokenizer.json | `<|startoftext|>`=1 (not added) / `<|im_end|>` / `<unk>`=0; `<|im_start|>`=6, `<|im_end|>`=7 |

`mgm_tokenizer_files(kind, src, dst, model_max_length)` copies a family tokenizer into an MGM checkpoint
with the changes MGM's training made before saving it (docs/original.md#training): pad = unk for
Vicuna/Mistral/Mixtral/Yi, pad = unk = `<|reserved_special_token_0|>` for LLaMA-3, pad untouched for Gemma;
`padding_side` "right"; `model_max_length` = the training length.

Run `python -m mgm.zoo.tiny --help` to build the whole tiny zoo; this module has no CLI of its own.
"""
from __future__ import annotations

import io
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from mgm.errors import UserError

TOKENIZER_KINDS: tuple[str, ...] = ("vicuna", "mistral", "gemma", "llama3", "yi")

# The system prompts and role strings of docs/original.md#templates, so template text tokenises compactly.
_TEMPLATE_TEXT: tuple[str, ...] = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.",
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions.",
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language.",
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.",
    "A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers.",
    "Answer the questions. Answer the question using a single word or phrase.",
    "USER: What is in the image? ASSISTANT: A red circle.",
    "Human: Describe the picture. Assistant: Two blue squares on a white background.",
    "[INST] What color is the star? [/INST] The star is yellow.",
    "system user model assistant",
)

_WORDS: dict[str, tuple[str, ...]] = {
    "det": ("the", "a", "one", "this", "that", "every", "some"),
    "colour": ("red", "green", "blue", "yellow", "black", "white", "orange", "purple", "gray", "brown", "pink"),
    "shape": ("circle", "square", "triangle", "star", "rectangle", "line", "dot", "cross", "heart"),
    "noun": ("image", "picture", "photo", "dog", "cat", "car", "tree", "house", "person", "sign", "text",
             "chart", "table", "book", "road", "sky", "boat", "bird", "cup", "number", "word", "answer"),
    "verb": ("is", "shows", "has", "contains", "looks", "sits", "stands", "appears", "holds", "reads"),
    "prep": ("in", "on", "under", "above", "near", "behind", "with", "next to", "left of", "right of"),
    "adj": ("large", "small", "bright", "dark", "tiny", "big", "old", "new", "round", "tall"),
    "wh": ("What", "Which", "Where", "How many", "Is there", "Does", "Can you see", "Why", "Who"),
    "role": ("USER", "ASSISTANT", "Human", "Assistant", "system", "user", "model", "assistant"),
    "number": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
}


def build_corpus(seed: int, n_sentences: int = 400) -> list[str]:
    """Return a deterministic little English corpus for tokenizer training.

    Args:
        seed: drives the random choice of words; the same seed gives the same corpus.
        n_sentences: number of generated sentences (the template strings are always included).

    Returns:
        A list of single-line sentences (no newlines; byte fallback covers them).
    """
    rng = random.Random(seed)
    w = _WORDS

    def pick(key: str) -> str:
        return rng.choice(w[key])

    patterns = (
        lambda: f"{pick('det').capitalize()} {pick('adj')} {pick('colour')} {pick('shape')} {pick('verb')} "
                f"{pick('prep')} {pick('det')} {pick('noun')}.",
        lambda: f"{pick('wh')} {pick('colour')} {pick('shape')}s are {pick('prep')} the {pick('noun')}?",
        lambda: f"{pick('role')}: {pick('wh')} is the {pick('colour')} {pick('noun')}? {pick('role')}: "
                f"It is {pick('adj')}.",
        lambda: f"There are {rng.randint(0, 999)} {pick('shape')}s and {pick('number')} {pick('noun')}s, "
                f"{rng.randint(0, 99)}% of them {pick('colour')}!",
        lambda: f"\"{pick('noun').capitalize()}\" ({pick('adj')}) - {pick('colour')}; {pick('shape')}: "
                f"{rng.randint(1, 12)}/{rng.randint(1, 12)}.",
        lambda: f"<{pick('noun')}> {pick('verb')} [{pick('colour')}] {{{pick('shape')}}} | {pick('role')} "
                f"{rng.randint(1900, 2030)}",
    )
    corpus = list(_TEMPLATE_TEXT) * 3
    corpus.extend(rng.choice(patterns)() for _ in range(n_sentences))
    return corpus


@dataclass(frozen=True)
class _SpmSpec:
    """SentencePiece training choices for one family (ids follow the released tokenizer)."""

    vocab_size: int
    pieces: dict[str, int]  # control pieces and their ids: unk/bos/eos/pad
    user_defined: tuple[str, ...]  # always-atomic pieces (chat tokens) placed right after the control ones
    add_dummy_prefix: bool


_SPM_SPECS: dict[str, _SpmSpec] = {
    "vicuna": _SpmSpec(600, {"unk": 0, "bos": 1, "eos": 2}, (), True),
    "mistral": _SpmSpec(620, {"unk": 0, "bos": 1, "eos": 2}, (), True),
    "gemma": _SpmSpec(700, {"pad": 0, "eos": 1, "bos": 2, "unk": 3}, ("<mask>", "<start_of_turn>", "<end_of_turn>"),
                      False),
    "yi": _SpmSpec(580, {"unk": 0, "bos": 1, "eos": 2},
                   ("<|Human|>", "<|Assistant|>", "<|System|>", "<|im_start|>", "<|im_end|>", "<|im_sep|>"), True),
}

_PIECE_NAMES: dict[str, dict[str, str]] = {
    "vicuna": {"unk": "<unk>", "bos": "<s>", "eos": "</s>"},
    "mistral": {"unk": "<unk>", "bos": "<s>", "eos": "</s>"},
    "gemma": {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"},
    "yi": {"unk": "<unk>", "bos": "<|startoftext|>", "eos": "<|endoftext|>"},
}

LLAMA3_SPECIAL_TOKENS: tuple[str, ...] = (
    # Same relative order as Meta-Llama-3: ids 128000.. in the real vocabulary, appended after the BPE here.
    "<|begin_of_text|>", "<|end_of_text|>",
    "<|reserved_special_token_0|>", "<|reserved_special_token_1|>", "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_4|>", "<|eot_id|>", "<|reserved_special_token_5|>",
)

# The tiktoken split pattern of Llama 3 (the pre-tokenizer regex of its tokenizer.json).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def family_special_tokens(kind: str) -> dict[str, str | None]:
    """Return the role tokens of a tokenizer kind: {'bos','eos','unk','pad'} -> token string or None.

    These are the values of the base LLM's tokenizer (before MGM training changed the pad token).
    """
    _check_kind(kind)
    if kind == "llama3":
        return {"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>", "unk": None, "pad": None}
    names = _PIECE_NAMES[kind]
    out: dict[str, str | None] = {"bos": names["bos"], "eos": names["eos"], "unk": names["unk"],
                                  "pad": names.get("pad")}
    if kind == "yi":
        out["eos"] = "<|im_end|>"  # Nous-Hermes-2-Yi ends turns (and generation) with <|im_end|>
    return out


def chat_special_tokens(kind: str) -> tuple[str, ...]:
    """Return the extra special tokens (beyond bos/eos/unk/pad) that must map to single ids."""
    _check_kind(kind)
    return {
        "vicuna": (),
        "mistral": (),
        "gemma": ("<start_of_turn>", "<end_of_turn>"),
        "llama3": tuple(t for t in LLAMA3_SPECIAL_TOKENS if t not in ("<|begin_of_text|>", "<|end_of_text|>")),
        "yi": ("<|im_start|>", "<|im_end|>"),
    }[kind]


def build_tokenizer(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Train the tiny tokenizer of `kind` and save it in its family's released layout.

    Args:
        kind: one of TOKENIZER_KINDS.
        out_dir: folder to write (created; existing tokenizer files are overwritten).
        seed: corpus seed; the same seed gives byte-identical files.

    Returns:
        The folder, loadable with `transformers.AutoTokenizer.from_pretrained(out_dir)`.

    Raises:
        UserError: unknown kind.
    """
    _check_kind(kind)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(seed)
    if kind == "llama3":
        _build_llama3(out, corpus)
    else:
        proto = _train_sentencepiece(corpus, _SPM_SPECS[kind], _PIECE_NAMES[kind])
        (out / "tokenizer.model").write_bytes(proto)
        _write_json(out / "tokenizer_config.json", _spm_tokenizer_config(kind, proto))
        _write_json(out / "special_tokens_map.json", _special_tokens_map(kind, pad=family_special_tokens(kind)["pad"]))
        if kind != "vicuna":
            # The released Mistral/Mixtral/Gemma/Yi repos ship a tokenizer.json beside tokenizer.model;
            # take it from transformers' own conversion of our model so both files agree.
            _write_converted_tokenizer_json(out)
    return out


def mgm_tokenizer_files(kind: str, src: str | Path, dst: str | Path, model_max_length: int) -> Path:
    """Copy a family tokenizer into an MGM checkpoint as MGM training saved it (docs/original.md#training).

    Args:
        kind: tokenizer kind of the base LLM.
        src: folder written by `build_tokenizer`.
        dst: checkpoint folder.
        model_max_length: `--model_max_length` of the training run (also `tokenizer_model_max_length`).

    Returns:
        `dst`.
    """
    _check_kind(kind)
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.model", "tokenizer.json"):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    special_map = json.loads((src / "special_tokens_map.json").read_text())
    if kind == "gemma":
        pad = "<pad>"  # MGM leaves Gemma's pad token alone
    elif kind == "llama3":
        # No unk in Llama 3: MGM sets unk = <|reserved_special_token_0|> and pad = unk.
        pad = "<|reserved_special_token_0|>"
        cfg["unk_token"] = pad
        special_map["unk_token"] = pad
    else:
        pad = cfg["unk_token"] if isinstance(cfg["unk_token"], str) else cfg["unk_token"]["content"]
    cfg["pad_token"] = pad
    special_map["pad_token"] = pad
    cfg["padding_side"] = "right"
    cfg["model_max_length"] = model_max_length
    _write_json(dst / "tokenizer_config.json", cfg)
    _write_json(dst / "special_tokens_map.json", special_map)
    return dst


# ----------------------------------------------------------------------------------------------------
# SentencePiece families


def _train_sentencepiece(corpus: list[str], spec: _SpmSpec, names: dict[str, str]) -> bytes:
    """Train a SentencePiece BPE model like Llama's (byte fallback, split digits, identity normaliser)."""
    import sentencepiece as spm

    ids = {f"{role}_id": spec.pieces.get(role, -1) for role in ("unk", "bos", "eos", "pad")}
    pieces = {f"{role}_piece": names[role] for role in names}
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        model_type="bpe",
        vocab_size=spec.vocab_size,
        hard_vocab_limit=False,  # the corpus is small: take what BPE can merge rather than fail
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=spec.add_dummy_prefix,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=list(spec.user_defined),
        num_threads=1,  # single thread + no shuffling keeps the model byte-identical for a seed
        shuffle_input_sentence=False,
        minloglevel=2,
        **ids,
        **pieces,
    )
    return buf.getvalue()


def _added_token(content: str, special: bool = True) -> dict[str, object]:
    """One `added_tokens_decoder` / special-token entry as transformers 4.36+ wrote them."""
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


def _spm_tokenizer_config(kind: str, proto: bytes) -> dict[str, object]:
    """tokenizer_config.json of a SentencePiece family, in the released (transformers 4.3x) style."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=proto)
    names = _PIECE_NAMES[kind]
    spec = _SPM_SPECS[kind]
    decoder = {str(sp.piece_to_id(tok)): _added_token(tok) for tok in names.values()}
    for tok in spec.user_defined:
        decoder[str(sp.piece_to_id(tok))] = _added_token(tok)
    roles = family_special_tokens(kind)
    cfg: dict[str, object] = {
        "add_bos_token": kind != "yi",  # Yi does not prepend BOS
        "add_eos_token": False,
        "added_tokens_decoder": dict(sorted(decoder.items(), key=lambda kv: int(kv[0]))),
        "bos_token": roles["bos"],
        "clean_up_tokenization_spaces": False,
        "eos_token": roles["eos"],
        "legacy": {"vicuna": False, "mistral": True, "gemma": None, "yi": True}[kind],
        "model_max_length": {"vicuna": 4096, "mistral": 1000000000000000019884624838656,
                             "gemma": 1000000000000000019884624838656, "yi": 4096}[kind],
        "pad_token": roles["pad"],
        "padding_side": "right" if kind == "vicuna" else "left",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer" if kind == "gemma" else "LlamaTokenizer",
        "unk_token": roles["unk"],
        "use_default_system_prompt": False,
    }
    extra = chat_special_tokens(kind)
    if extra:
        cfg["additional_special_tokens"] = list(extra)
    return cfg


def _special_tokens_map(kind: str, pad: str | None) -> dict[str, object]:
    """special_tokens_map.json (bos/eos/unk/pad + additional special tokens)."""
    roles = family_special_tokens(kind)
    out: dict[str, object] = {}
    extra = chat_special_tokens(kind)
    if extra:
        out["additional_special_tokens"] = list(extra)
    for role in ("bos", "eos", "pad", "unk"):
        tok = pad if role == "pad" else roles[role]
        if tok is not None:
            entry = _added_token(tok)
            entry.pop("special")
            out[f"{role}_token"] = entry
    return out


def _write_converted_tokenizer_json(folder: Path) -> None:
    """Write tokenizer.json = transformers' conversion of the folder's tokenizer.model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.backend_tokenizer.save(str(folder / "tokenizer.json"))


# ----------------------------------------------------------------------------------------------------
# Llama 3 (byte-level BPE)


def _build_llama3(out: Path, corpus: list[str]) -> None:
    """Train a byte-level BPE with Llama 3's split regex, special tokens and BOS post-processor."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL_TOKENS])
    bos = "<|begin_of_text|>"
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                      special_tokens=[(bos, bos_id)]),
    ])
    tok.save(str(out / "tokenizer.json"))
    decoder = {str(tok.token_to_id(t)): _added_token(t) for t in LLAMA3_SPECIAL_TOKENS}
    _write_json(out / "tokenizer_config.json", {
        "added_tokens_decoder": decoder,
        "bos_token": bos,
        "clean_up_tokenization_spaces": True,
        "eos_token": "<|end_of_text|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
    _write_json(out / "special_tokens_map.json", {"bos_token": bos, "eos_token": "<|end_of_text|>"})


# ----------------------------------------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in TOKENIZER_KINDS:
        raise UserError(f"unknown tokenizer kind {kind!r}; valid kinds: {', '.join(TOKENIZER_KINDS)}")


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
