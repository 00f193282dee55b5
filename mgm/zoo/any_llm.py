"""Tiny random base LLMs of current architectures, and SigLIP / timm ConvNeXt towers, for "MGM on any LLM".

Each LLM folder is what a user brings: a random `*ForCausalLM` of that architecture (hidden 64, 2 layers,
4 heads, head_dim 16, 2 KV heads, MLP 128, 512 positions) saved with `save_pretrained`, a byte-level BPE
tokenizer trained here on the zoo corpus with the family's special tokens, and a Jinja chat template in
the family's turn format (written here, in the shape of the published one), so `--version chat_template`
trains and answers with it. Towers: a full two-tower SigLIP folder (or vision-only), and a timm
ConvNeXt / ConvNeXt-V2 folder (`config.json` with `architecture` + `model_args`, timm's keys).

| arch          | model_type    | chat format (turn end)                      | BOS added by the tokenizer |
|---------------|---------------|---------------------------------------------|----------------------------|
| `qwen3`       | qwen3         | ChatML, empty think block in the last reply (`<|im_end|>`) | no |
| `qwen3_moe`   | qwen3_moe     | as qwen3; 4 experts, top-2                   | no |
| `gemma3`      | gemma3_text   | `<start_of_turn>model` (`<end_of_turn>`)     | yes (`<bos>`) |
| `phi3`        | phi3          | `<|user|>` / `<|assistant|>` (`<|end|>`)     | yes (`<s>`) |
| `smollm3`     | smollm3       | ChatML with a metadata system block          | no |
| `olmo2`       | olmo2         | `<|user|>` / `<|assistant|>` (EOS)           | no (the template writes it) |
| `llama3_2`    | llama         | Llama 3 headers (`<|eot_id|>`)               | yes (`<|begin_of_text|>`) |
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mgm.errors import UserError, exit_on_user_error

_CHATML = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' and loop.last and think -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m.content + '<|im_end|>\\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if think and enable_thinking is defined and not enable_thinking -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}{%- endif -%}")
QWEN3_TEMPLATE = "{%- set think = true -%}" + _CHATML
SMOLLM3_TEMPLATE = ("{%- set think = false -%}"
                    "{{- '<|im_start|>system\\n## Metadata\\n\\nReasoning Mode: /no_think\\n<|im_end|>\\n' -}}" + _CHATML)
GEMMA3_TEMPLATE = (
    "{{- bos_token -}}{%- for m in messages -%}"
    "{%- set role = 'model' if m.role == 'assistant' else m.role -%}"
    "{{- '<start_of_turn>' + role + '\\n' + (m.content | trim) + '<end_of_turn>\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}")
PHI3_TEMPLATE = (
    "{%- for m in messages -%}{{- '<|' + m.role + '|>\\n' + m.content + '<|end|>\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}")
OLMO2_TEMPLATE = (
    "{{- bos_token -}}{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}{{- '<|assistant|>\\n' + m.content + eos_token + '\\n' -}}"
    "{%- else -%}{{- '<|' + m.role + '|>\\n' + m.content + '\\n' -}}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}")
LLAMA3_TEMPLATE = (
    "{{- bos_token -}}{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + (m.content | trim) + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}")


@dataclass(frozen=True)
class AnyLLMSpec:
    """One architecture: its base model_type, tokenizer tokens and chat template, config extras."""

    arch: str
    model_type: str
    bos: str | None
    eos: str
    pad: str | None
    end_of_turn: str  # the token a reply ends with (a generation EOS)
    specials: tuple[str, ...]
    add_bos: bool
    chat_template: str
    config_extra: dict = field(default_factory=dict)


ANY_LLMS: dict[str, AnyLLMSpec] = {s.arch: s for s in (
    AnyLLMSpec("qwen3", "qwen3", None, "<|im_end|>", "<|endoftext|>", "<|im_end|>",
               ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"), False, QWEN3_TEMPLATE,
               {"tie_word_embeddings": True}),
    AnyLLMSpec("qwen3_moe", "qwen3_moe", None, "<|im_end|>", "<|endoftext|>", "<|im_end|>",
               ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"), False, QWEN3_TEMPLATE,
               {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64, "decoder_sparse_step": 1,
                "mlp_only_layers": []}),
    AnyLLMSpec("gemma3", "gemma3_text", "<bos>", "<eos>", "<pad>", "<end_of_turn>",
               ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"), True, GEMMA3_TEMPLATE,
               {"query_pre_attn_scalar": 16, "sliding_window": 64, "tie_word_embeddings": True}),
    AnyLLMSpec("phi3", "phi3", "<s>", "<|endoftext|>", "<|endoftext|>", "<|end|>",
               ("<s>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"), True, PHI3_TEMPLATE),
    AnyLLMSpec("smollm3", "smollm3", None, "<|im_end|>", "<|im_end|>", "<|im_end|>",
               ("<|im_start|>", "<|im_end|>", "<think>", "</think>"), False, SMOLLM3_TEMPLATE,
               {"tie_word_embeddings": True}),
    AnyLLMSpec("olmo2", "olmo2", "<|endoftext|>", "<|endoftext|>", "<|pad|>", "<|endoftext|>",
               ("<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>"), False, OLMO2_TEMPLATE),
    AnyLLMSpec("llama3_2", "llama", "<|begin_of_text|>", "<|eot_id|>", None, "<|eot_id|>",
               ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
               True, LLAMA3_TEMPLATE, {"tie_word_embeddings": True, "rope_theta": 500000.0}),
)}


def _spec(arch: str) -> AnyLLMSpec:
    if arch not in ANY_LLMS:
        raise UserError(f"unknown architecture {arch!r}; valid: {', '.join(ANY_LLMS)}")
    return ANY_LLMS[arch]


def build_any_tokenizer(arch: str, out_dir: str | Path, seed: int = 0):
    """Train the byte-level BPE of `arch` on the zoo corpus and save it with its chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from mgm.zoo.tokenizers import build_corpus

    spec = _spec(arch)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(build_corpus(seed), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec.specials])
    if spec.add_bos:
        bos_id = tok.token_to_id(spec.bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{spec.bos} $A", pair=f"{spec.bos} $A $B",
                                                           special_tokens=[(spec.bos, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec.bos, eos_token=spec.eos,
                                   pad_token=spec.pad, chat_template=spec.chat_template)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return fast


def build_any_llm(arch: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random base LLM folder of `arch` (weights, tokenizer, generation config)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    spec = _spec(arch)
    out = Path(out_dir)
    tokenizer = build_any_tokenizer(arch, out, seed)
    ids = {name: tokenizer.convert_tokens_to_ids(tok) if tok else None
           for name, tok in (("bos", spec.bos), ("eos", spec.eos), ("pad", spec.pad), ("eot", spec.end_of_turn))}
    values = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=512,
                  bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    values.update(spec.config_extra)
    config = AutoConfig.for_model(spec.model_type, **values)
    model = AutoModelForCausalLM.from_config(config).eval()
    from mgm.zoo.random_weights import randomize_, seeded_generator  # torch: only when building

    randomize_(model, seeded_generator(seed, f"llm/{arch}"))
    model.save_pretrained(str(out))
    eos = list(dict.fromkeys(i for i in (ids["eos"], ids["eot"]) if i is not None))
    GenerationConfig(bos_token_id=ids["bos"], eos_token_id=eos, pad_token_id=ids["pad"]).save_pretrained(str(out))
    return out


@dataclass(frozen=True)
class SiglipTowerSpec:
    """Sizes of the tiny SigLIP ViT (no CLS token: (image_size / patch_size)² LR tokens)."""

    hidden_size: int = 32
    num_hidden_layers: int = 3
    num_attention_heads: int = 2
    intermediate_size: int = 64
    image_size: int = 32
    patch_size: int = 8


def build_siglip_tower(out_dir: str | Path, seed: int = 0, spec: SiglipTowerSpec = SiglipTowerSpec(),
                       vision_only: bool = False) -> Path:
    """A tiny SigLIP folder as published: full two-tower `SiglipModel` (or `SiglipVisionModel`) + processor."""
    from transformers import SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vision = dict(hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                  num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
                  image_size=spec.image_size, patch_size=spec.patch_size)
    if vision_only:
        model = SiglipVisionModel(SiglipVisionConfig(**vision))
    else:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    vocab_size=64, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    from mgm.zoo.random_weights import randomize_, seeded_generator

    randomize_(model.eval(), seeded_generator(seed, "tower/siglip"))
    model.save_pretrained(str(out))
    side = spec.image_size
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": side, "width": side},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, indent=2) + "\n")
    return out


def build_timm_convnext_tower(out_dir: str | Path, seed: int = 0, v2: bool = False,
                              depths: tuple[int, ...] = (1, 1, 1, 1), dims: tuple[int, ...] = (8, 16, 32, 64)) -> Path:
    """A tiny timm ConvNeXt (or ConvNeXt-V2) folder: timm's `config.json` + `model.safetensors` (timm keys)."""
    from safetensors.torch import save_file
    from timm.models.convnext import ConvNeXt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trunk = ConvNeXt(depths=depths, dims=dims, num_classes=0, ls_init_value=None if v2 else 1e-6, use_grn=v2)
    from mgm.zoo.random_weights import randomize_, seeded_generator

    randomize_(trunk.eval(), seeded_generator(seed, "tower/timm-convnext"))
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(out / "model.safetensors"))
    arch = "convnextv2_atto" if v2 else "convnext_tiny"
    (out / "config.json").write_text(json.dumps({
        "architecture": arch, "num_classes": 0, "num_features": dims[-1],
        "model_args": {"depths": list(depths), "dims": list(dims)},
        "pretrained_cfg": {"tag": "mgm_tiny", "input_size": [3, 64, 64], "mean": [0.485, 0.456, 0.406],
                           "std": [0.229, 0.224, 0.225]}}, indent=2) + "\n")
    return out


def make_tower(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    """One tower folder by kind: siglip, siglip_vision, timm_convnext, timm_convnext_v2."""
    builders = {"siglip": lambda: build_siglip_tower(out_dir, seed),
                "siglip_vision": lambda: build_siglip_tower(out_dir, seed, vision_only=True),
                "timm_convnext": lambda: build_timm_convnext_tower(out_dir, seed),
                "timm_convnext_v2": lambda: build_timm_convnext_tower(out_dir, seed, v2=True)}
    if kind not in builders:
        raise UserError(f"unknown tower kind {kind!r}; valid: {', '.join(builders)}")
    import torch

    with torch.no_grad():
        return builders[kind]()


def build_parser():
    """The command line of `python -m mgm.zoo.any_llm`."""
    import argparse

    from mgm.program import program_name

    parser = argparse.ArgumentParser(
        prog=program_name("python -m mgm.zoo.any_llm"),
        description="Write one tiny random base LLM (with a locally trained tokenizer and its chat template) or "
                    "one tiny tower folder, offline, for trying MGM on your own LLM.")
    parser.add_argument("what", choices=("llm", "tower"), help="an LLM folder or a tower folder")
    parser.add_argument("kind", help=f"LLM: {', '.join(ANY_LLMS)}; tower: siglip, siglip_vision, timm_convnext, "
                                     "timm_convnext_v2")
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--seed", type=int, default=0)
    return parser


@exit_on_user_error
def main(argv=None) -> int:
    import os
    import sys

    args = build_parser().parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # see mgm.zoo.tiny.main
    folder = build_any_llm(args.kind, args.out, args.seed) if args.what == "llm" else \
        make_tower(args.kind, args.out, args.seed)
    print(f"{args.what} {args.kind} written to {folder}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
