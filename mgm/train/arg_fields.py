"""The training flags mgm itself defines, as plain dataclasses: importable without transformers or torch.

`ModelArguments` and `DataArguments` are the original's; `MGMTrainingFields` holds the original's additions
to (and default changes of) `transformers.TrainingArguments`, which `mgm.train.args.TrainingArguments`
combines with HF's class. `mgm.train.help.build_help_parser()` turns these fields into the quick `--help` of the
training entry points: the full parser needs `transformers.TrainingArguments`, which loads torch (seconds),
so its complete listing is behind `--help-all`.
"""
from __future__ import annotations

from dataclasses import dataclass, field


LORA_BIAS_CHOICES = ("none", "all", "lora_only")
BITS_CHOICES = (4, 8, 16)


@dataclass
class ModelArguments:
    """Which LLM, towers and projector the MGM model is built from (original names and defaults)."""

    model_name_or_path: str | None = field(default="facebook/opt-125m", metadata={
        "help": "base LLM folder (or an MGM checkpoint to continue from); its config.json model_type picks the family"})
    version: str | None = field(default="v0", metadata={
        "help": "conversation template and tokenizer rules: plain, v1, llama_3, gemma, mistral_instruct, "
                "chatml_direct, ..."})
    freeze_backbone: bool = field(default=False, metadata={"help": "freeze the LLM body (not lm_head)"})
    tune_mm_mlp_adapter: bool = field(default=False, metadata={
        "help": "stage 1: train only the projector and the patch-info-mining modules; saves mm_projector.bin"})
    vision_tower: str | None = field(default=None, metadata={"help": "LR tower folder (HF CLIP)"})
    vision_tower_aux: str | None = field(default=None, metadata={"help": "HR tower folder (OpenCLIP ConvNeXt)"})
    optimize_vision_tower: bool = field(default=False, metadata={"help": "train the last half of the CLIP layers"})
    optimize_vision_tower_aux: bool = field(default=False, metadata={
        "help": "train the last block of every ConvNeXt stage"})
    drop_path: bool = field(default=True, metadata={"help": "ConvNeXt stochastic depth during training"})
    image_processor: str | None = field(default=None, metadata={"help": "unused (EVA towers only in the original)"})
    mm_vision_select_layer: int | None = field(default=-1, metadata={"help": "CLIP hidden-state index for features"})
    pretrain_mm_mlp_adapter: str | None = field(default=None, metadata={
        "help": "stage 2: the stage-1 mm_projector.bin to start the projector and mining modules from"})
    mm_projector_type: str | None = field(default="linear", metadata={"help": "linear, mlp2x_gelu, identity"})
    mm_use_im_start_end: bool = field(default=False, metadata={"help": "wrap image tokens in <im_start>/<im_end>"})
    mm_use_im_patch_token: bool = field(default=True, metadata={"help": "add the <im_patch> token"})
    mm_vision_select_feature: str | None = field(default="patch", metadata={"help": "patch or cls_patch"})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "sdpa, eager or flash_attention_2 (default: sdpa for train.py, flash-attention-2 when installed "
                "for train_mem.py)"})


@dataclass
class DataArguments:
    """Where the data is and how images are prepared (original names and defaults)."""

    data_path: str | None = field(default=None, metadata={
        "help": "LLaVA conversation data: a .json list or a .jsonl file (one sample per line)"})
    lazy_preprocess: bool = field(default=False, metadata={"help": "accepted for compatibility (always lazy)"})
    is_multimodal: bool = field(default=False, metadata={"help": "set automatically when a vision tower is given"})
    image_folder: str | None = field(default=None, metadata={"help": "folder the samples' image paths are relative to"})
    image_aspect_ratio: str = field(default="square", metadata={
        "help": "pad: pad to square with the mean colour first; square (default): resize + centre crop"})
    image_grid_pinpoints: str | None = field(default=None, metadata={"help": "unused"})
    image_size_aux: int | None = field(default=320, metadata={"help": "HR input side (768 base, 1536 HD)"})
    image_grid: int | None = field(default=1, metadata={"help": "LR grid side g (2 = HD)"})
    image_global: bool | None = field(default=False, metadata={"help": "HD: also encode a global view"})
    skip_bad_samples: bool = field(default=False, metadata={
        "help": "skip (and count, in <output_dir>/skipped_samples.jsonl) samples with a missing or corrupt image, "
                "a malformed conversation or no supervised token, instead of stopping at the first one"})


@dataclass
class MGMTrainingFields:
    """The original MGM additions to `transformers.TrainingArguments` (and the defaults it changes)."""

    cache_dir: str | None = field(default=None, metadata={"help": "cache folder for hub downloads"})
    optim: str = field(default="adamw_torch", metadata={"help": "optimizer (default adamw_torch)"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "must stay False for MGM batches"})
    freeze_mm_mlp_adapter: bool = field(default=False, metadata={"help": "keep the projector frozen"})
    mpt_attn_impl: str | None = field(default="triton", metadata={"help": "unused"})
    model_max_length: int = field(default=512, metadata={
        "help": "maximum sequence length; sequences are right-padded (and possibly truncated)"})
    double_quant: bool = field(default=True, metadata={"help": "QLoRA: double quantisation"})
    quant_type: str = field(default="nf4", metadata={"help": "QLoRA: fp4 or nf4"})
    bits: int = field(default=16, metadata={"help": "16, or 4 / 8 for QLoRA (bitsandbytes)"})
    lora_enable: bool = field(default=False, metadata={"help": "train LoRA adapters on the LLM's Linear layers"})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_weight_path: str = field(default="", metadata={"help": "unused"})
    lora_bias: str = field(default="none", metadata={"help": "none, all or lora_only"})
    mm_projector_lr: float | None = field(default=None, metadata={
        "help": "separate learning rate for mm_projector parameters"})
    group_by_modality_length: bool = field(default=False, metadata={
        "help": "batches of image-only or text-only samples of similar length"})
    lr_multi: str | None = field(default=None, metadata={
        "help": "per-module LR multipliers 'substring:mult,substring:mult', "
                "e.g. 'model.mm_projector:2,model.vlm_uni:2'"})
    evaluation_strategy: str | None = field(default=None, metadata={"help": "old name of --eval_strategy"})
    warmup_ratio: float | None = field(default=None, metadata={
        "help": "old flag: warm-up as a fraction of the total steps (given to --warmup_steps)"})


DESCRIPTION = ("Train MGM (stage 1: --tune_mm_mlp_adapter True; stage 2: --pretrain_mm_mlp_adapter FILE). "
               "Launch with python, torchrun or deepspeed. --config FILE.yaml supplies flags (command-line "
               "flags override it). Old flag names --evaluation_strategy and --warmup_ratio are accepted.")


def wants_help(argv: list[str]) -> bool:
    """True when the command line asks for help (`-h`, `--help` or `--help-all`)."""
    return any(a in ("-h", "--help", "--help-all") for a in argv)
