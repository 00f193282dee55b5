"""Tiny random base LLMs, one per family MGM was released on, as a table of `LLMSpec` rows.

`build_llm(family, out_dir, seed)` writes an HF folder like the released base model, shrunk: a random
`*ForCausalLM` (hidden 64, 2 layers, 4 heads, MLP 128, vocab = len(tokenizer), 512 positions) saved with
`save_pretrained` (safetensors), the family tokenizer (mgm.zoo.tokenizers) and `generation_config.json`.

| family    | HF class            | tokenizer | kv heads | notes |
|-----------|---------------------|-----------|----------|-------|
| `vicuna`  | LlamaForCausalLM    | vicuna    | 4        | Vicuna-7B v1.5 (MHA) |
| `llama3`  | LlamaForCausalLM    | llama3    | 2 (GQA)  | rope_theta 500000; generation eos = [end_of_text, eot_id] |
| `gemma`   | GemmaForCausalLM    | gemma     | 1 (MQA)  | head_dim 16, tied embeddings; config `hidden_act: "gelu"`, `hidden_activation: null` as gemma-2b-it was released |
| `mistral` | MistralForCausalLM  | mistral   | 2 (GQA)  | sliding_window null |
| `mixtral` | MixtralForCausalLM  | mistral   | 2 (GQA)  | 4 experts, top-2 (saved with the released `block_sparse_moe.experts.{e}.w{1,2,3}` keys) |
| `yi`      | LlamaForCausalLM    | yi        | 2 (GQA)  | Nous-Hermes-2-Yi (ChatML); rope_theta 5e6 |

`LLMSpec.legacy_config(...)` returns the config dict as transformers 4.36/4.38 wrote it (what a released
MGM config.json starts from). Run `python -m mgm.zoo.tiny --help` to build the whole zoo.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mgm.errors import UserError

HIDDEN_SIZE = 64
NUM_LAYERS = 2
NUM_HEADS = 4
INTERMEDIATE_SIZE = 128
MAX_POSITIONS = 512


@dataclass(frozen=True)
class LLMSpec:
    """One LLM family: its HF class, tokenizer kind, MGM names and the config values that differ."""

    family: str
    hf_class: str  # transformers class name, e.g. "LlamaForCausalLM"
    hf_model_type: str  # "llama", "gemma", "mistral", "mixtral"
    tokenizer: str  # mgm.zoo.tokenizers kind
    mgm_suffix: str  # "" (mgm), "gemma", "mistral", "mixtral"
    mgm_class_infix: str  # "Llama", "Gemma", "Mistral", "Mixtral"
    display: str  # checkpoint name part, e.g. "Vicuna" -> MGM-Tiny-Vicuna
    conv_mode: str  # template the released model is used with (docs/original.md#templates)
    num_key_value_heads: int
    rope_theta: float
    rms_norm_eps: float
    transformers_version: str  # version the original MGM run saved with
    # Family facts as data (a new family is one row): the config's pad id, tied embeddings and explicit
    # head_dim; `released_act` is the `hidden_act` the released config says when it differs from the
    # class default (written as-is, with `hidden_activation: null`); `config_extra` go into both the tiny
    # config and the legacy one, `legacy_extra` only into the legacy one (keys transformers 4.36 wrote);
    # `generation_eos` names the generation config's eos tokens when they are not just the tokenizer's;
    # `generation_extra` are further generation-config values.
    pad_token_id: int | None = None
    tied_embeddings: bool = False
    explicit_head_dim: bool = False
    released_act: str | None = None
    config_extra: tuple[tuple[str, object], ...] = ()
    legacy_extra: tuple[tuple[str, object], ...] = ()
    generation_eos: tuple[str, ...] = ()
    generation_extra: tuple[tuple[str, object], ...] = ()
    # Sizes a test may change with `dataclasses.replace(spec, ...)` (vLLM's CPU attention needs head_dim >= 32;
    # two HD images need more than 512 positions).
    num_attention_heads: int = NUM_HEADS
    max_position_embeddings: int = MAX_POSITIONS

    def mgm_model_type(self, legacy: bool = False) -> str:
        """`model_type` of the MGM checkpoint: mgm / mgm_gemma / ... or the pre-rename mini_gemini*."""
        base = "mini_gemini" if legacy else "mgm"
        return f"{base}_{self.mgm_suffix}" if self.mgm_suffix else base

    def mgm_architecture(self, legacy: bool = False) -> str:
        """`architectures[0]` of the MGM checkpoint, e.g. MGMLlamaForCausalLM / MiniGeminiLlamaForCausalLM."""
        return f"{'MiniGemini' if legacy else 'MGM'}{self.mgm_class_infix}ForCausalLM"

    def token_ids(self, tokenizer_dir: str | Path) -> dict[str, object]:
        """bos/eos/pad ids of the base LLM config (and the generation eos list), read from the tokenizer."""
        tok = json.loads((Path(tokenizer_dir) / "tokenizer_config.json").read_text())
        ids = _token_ids(tokenizer_dir)
        eos_name = tok["eos_token"]
        out: dict[str, object] = {"bos_token_id": ids[tok["bos_token"]], "eos_token_id": ids[eos_name]}
        if self.pad_token_id is not None:
            out["pad_token_id"] = self.pad_token_id
        out["generation_eos"] = [ids[t] for t in self.generation_eos] if self.generation_eos else out["eos_token_id"]
        return out

    def hf_config_kwargs(self, vocab_size: int, token_ids: dict[str, object]) -> dict[str, object]:
        """Keyword arguments of the transformers config class for the tiny model."""
        kw: dict[str, object] = dict(
            vocab_size=vocab_size, hidden_size=HIDDEN_SIZE, intermediate_size=INTERMEDIATE_SIZE,
            num_hidden_layers=NUM_LAYERS, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps, rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            bos_token_id=token_ids["bos_token_id"], eos_token_id=token_ids["eos_token_id"],
            pad_token_id=token_ids.get("pad_token_id"), tie_word_embeddings=self.tied_embeddings,
        )
        if self.explicit_head_dim:
            kw["head_dim"] = HIDDEN_SIZE // self.num_attention_heads
        kw.update(self.config_extra)
        return kw

    def legacy_config(self, vocab_size: int, token_ids: dict[str, int | None], dtype: str = "float32"
                      ) -> dict[str, object]:
        """The base LLM config as the transformers version of the original run serialised it.

        Keys follow Vicuna-7B-v1.5 / Meta-Llama-3-8B-Instruct / Nous-Hermes-2-Yi-34B (LlamaConfig, 4.36),
        gemma-2b-it (GemmaConfig, 4.38: `hidden_act: "gelu"`, no `hidden_activation`), Mistral-7B /
        Mixtral-8x7B (4.36), with the tiny sizes. `model_type`/`architectures` are the plain LLM's; the MGM
        writer replaces them. `token_ids` holds bos_token_id / eos_token_id / pad_token_id (None = absent).
        """
        ids = token_ids
        cfg: dict[str, object] = {
            "architectures": [self.hf_class],
            "attention_dropout": 0.0,
            "bos_token_id": ids["bos_token_id"],
            "eos_token_id": ids["eos_token_id"],
            "hidden_act": self.released_act or "silu",
            "hidden_size": HIDDEN_SIZE,
            "initializer_range": 0.02,
            "intermediate_size": INTERMEDIATE_SIZE,
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": self.hf_model_type,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": NUM_LAYERS,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tied_embeddings,
            "torch_dtype": dtype,
            "transformers_version": self.transformers_version,
            "use_cache": True,
            "vocab_size": vocab_size,
        }
        if ids.get("pad_token_id") is not None:
            cfg["pad_token_id"] = ids["pad_token_id"]
        if self.explicit_head_dim:
            cfg["head_dim"] = HIDDEN_SIZE // self.num_attention_heads
        cfg.update(self.config_extra)
        cfg.update(self.legacy_extra)
        return dict(sorted(cfg.items()))


_LLAMA_436 = (("attention_bias", False), ("rope_scaling", None), ("pretraining_tp", 1))  # LlamaConfig, 4.36
_NO_SLIDING_WINDOW = (("sliding_window", None),)
LLM_SPECS: dict[str, LLMSpec] = {
    s.family: s
    for s in (
        LLMSpec("vicuna", "LlamaForCausalLM", "llama", "vicuna", "", "Llama", "Vicuna", "vicuna_v1", 4, 10000.0,
                1e-5, "4.36.2", pad_token_id=0, legacy_extra=_LLAMA_436),
        LLMSpec("llama3", "LlamaForCausalLM", "llama", "llama3", "", "Llama", "LLaMA3", "llama_3", 2, 500000.0,
                1e-5, "4.36.2", legacy_extra=_LLAMA_436, generation_eos=("<|end_of_text|>", "<|eot_id|>"),
                generation_extra=(("do_sample", True), ("temperature", 0.6), ("top_p", 0.9),
                                  ("max_length", MAX_POSITIONS))),
        LLMSpec("gemma", "GemmaForCausalLM", "gemma", "gemma", "gemma", "Gemma", "Gemma", "gemma", 1, 10000.0,
                1e-6, "4.38.2", pad_token_id=0, tied_embeddings=True, explicit_head_dim=True, released_act="gelu",
                legacy_extra=(("attention_bias", False), ("rope_scaling", None))),
        LLMSpec("mistral", "MistralForCausalLM", "mistral", "mistral", "mistral", "Mistral", "Mistral",
                "mistral_instruct", 2, 10000.0, 1e-5, "4.36.2", config_extra=_NO_SLIDING_WINDOW),
        LLMSpec("mixtral", "MixtralForCausalLM", "mixtral", "mistral", "mixtral", "Mixtral", "Mixtral",
                "mistral_instruct", 2, 1000000.0, 1e-5, "4.36.2",
                config_extra=(*_NO_SLIDING_WINDOW, ("num_local_experts", 4), ("num_experts_per_tok", 2),
                              ("router_aux_loss_coef", 0.02)),
                legacy_extra=(("output_router_logits", False),)),
        LLMSpec("yi", "LlamaForCausalLM", "llama", "yi", "", "Llama", "Yi", "chatml_direct", 2, 5000000.0, 1e-5,
                "4.36.2", pad_token_id=0, legacy_extra=_LLAMA_436),
    )
}
LLM_FAMILIES: tuple[str, ...] = tuple(LLM_SPECS)


def get_llm_spec(family: str) -> LLMSpec:
    """Return the spec of `family`; UserError listing the valid names otherwise."""
    try:
        return LLM_SPECS[family]
    except KeyError:
        raise UserError(f"unknown LLM family {family!r}; valid families: {', '.join(LLM_FAMILIES)}") from None


def build_llm(family: "str | LLMSpec", out_dir: str | Path, seed: int) -> Path:
    """Write the tiny random base LLM of `family` (weights, config, generation config, tokenizer).

    Args:
        family: one of LLM_FAMILIES, or an LLMSpec (e.g. a table row with other head counts).
        out_dir: folder to write.
        seed: seed of the tokenizer corpus and of the weights.

    Returns:
        The folder, loadable with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`.
    """
    import transformers
    from transformers import AutoTokenizer

    from mgm.zoo.random_weights import randomize_, seeded_generator
    from mgm.zoo.tokenizers import build_tokenizer

    spec = family if isinstance(family, LLMSpec) else get_llm_spec(family)
    family = spec.family
    out = Path(out_dir)
    build_tokenizer(spec.tokenizer, out, seed)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    ids = spec.token_ids(out)
    config_cls = getattr(transformers, spec.hf_class.replace("ForCausalLM", "Config"))
    model_cls = getattr(transformers, spec.hf_class)
    config = config_cls(**spec.hf_config_kwargs(len(tokenizer), ids))
    model = model_cls(config).eval()
    randomize_(model, seeded_generator(seed, f"llm/{family}"))
    model.save_pretrained(str(out))
    if spec.released_act:
        # E.g. released gemma-2b-it (what MGM-2B was trained from): `hidden_act: "gelu"`, no tanh marker.
        cfg = json.loads((out / "config.json").read_text())
        cfg["hidden_act"] = spec.released_act
        cfg["hidden_activation"] = None
        (out / "config.json").write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")
    generation: dict[str, object] = {"bos_token_id": ids["bos_token_id"], "eos_token_id": ids["generation_eos"]}
    if "pad_token_id" in ids:
        generation["pad_token_id"] = ids["pad_token_id"]
    generation.update(spec.generation_extra)
    generation["transformers_version"] = spec.transformers_version
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out


def _token_ids(tokenizer_dir: str | Path) -> dict[str, int]:
    """{token: id} for the special tokens of a saved tokenizer (from its tokenizer.json or tokenizer.model)."""
    d = Path(tokenizer_dir)
    if (d / "tokenizer.json").exists():
        data = json.loads((d / "tokenizer.json").read_text())
        ids = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
        vocab = data["model"]["vocab"]
        if isinstance(vocab, dict):
            ids.update({k: v for k, v in vocab.items() if k.startswith("<")})
        return ids
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    return {sp.id_to_piece(i): i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)
            or sp.id_to_piece(i).startswith("<|")}
