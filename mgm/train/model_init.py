"""Build the model, tokenizer and image processor of a training stage (docs/original.md#training).

The LLM family comes from the base folder's `config.json` `model_type` (never from the path text,
docs/original.md#fixed-defects). The MGM model is made in one go: the family's MGM config = the base LLM config + the MGM
keys of the flags, then `from_pretrained` on the base folder builds towers, projector and mining modules;
the towers are filled from their folders, the projector and mining modules get PyTorch's default
initialisation (as the original created them fresh), and a stage-1 adapter is loaded when given.
An MGM checkpoint may be the base too (continued fine-tuning): then nothing is re-initialised.

Which parameters train is decided in one place, `set_trainable`, at the end:
- stage 1 (`--tune_mm_mlp_adapter True`): projector + the three `vlm_uni_*` modules;
- stage 2: LLM + projector + mining modules (towers frozen unless `--optimize_vision_tower(_aux)`);
- LoRA: the LoRA tensors + projector + mining modules (PEFT freezes the rest).

Under ZeRO-3 (weights partitioned at construction) weights are written inside `gathered(...)`, the
parameters the towers and mining read directly (not through a sub-module call) are registered as external
parameters so DeepSpeed gathers them, and the family table's ZeRO-3 leaf modules
(Mixtral's MoE blocks) are set.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mgm.errors import UserError
from mgm.train.checkpoint import gathered, load_pretrain_adapter, unwrap, zero3_enabled

logger = logging.getLogger(__name__)

MULTIMODAL_WORDS = ("mm_projector", "vision_tower", "vision_resampler", "vlm_uni")
# Modules bitsandbytes must leave alone: transformers 5 matches these names from the start of the module path
# (or as a suffix), so the multimodal modules are named with their `model.` prefix.
NOT_QUANTIZED = ("model.mm_projector", "model.vision_tower", "model.vision_tower_aux",
                 "model.vlm_uni_query_projector", "model.vlm_uni_aux_projector", "model.vlm_uni_val_projector",
                 "lm_head")
# Keys of a base config that describe the file, not the model.
_DROP_KEYS = ("model_type", "architectures", "transformers_version", "_name_or_path", "auto_map")


@dataclass
class TrainingSetup:
    """What `build_training_setup` returns."""

    model: nn.Module  # the MGM causal LM, or a PEFT model wrapping it
    tokenizer: Any
    template_name: str
    image_processor: Any  # mgm.data.image.ImageProcessor, None for an LLM-only run
    multimodal: bool
    stage: str  # "pretrain" (stage 1), "finetune" (stage 2) or "llm" (no vision tower)
    lora: bool
    adapter_report: dict[str, int] | None = None

    @property
    def base_model(self) -> nn.Module:
        return unwrap(self.model)


def compute_dtype(training_args) -> torch.dtype:
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    return torch.float32


def resolve_attn_implementation(requested: str | None, entry_default: str | None) -> str:
    """The attention back-end: the flag, else the entry point's; flash-attention-2 only when usable."""
    choice = requested or entry_default or "sdpa"
    if choice == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            logger.warning("flash-attention-2 is not installed; training with sdpa attention")
            return "sdpa"
        if not torch.cuda.is_available():
            logger.warning("flash-attention-2 needs CUDA; training with sdpa attention")
            return "sdpa"
    if choice not in ("sdpa", "eager", "flash_attention_2", "flex_attention"):
        raise UserError(f"--attn_implementation {choice!r} is unknown; valid: sdpa, eager, flash_attention_2")
    return choice


def read_base_config(path: str, cache_dir: str | None = None) -> dict:
    """config.json of `--model_name_or_path` as a dict (UserError when there is none)."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(path, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"--model_name_or_path {path}: cannot read its config.json ({exc})") from None
    if "model_type" not in config:
        raise UserError(f"--model_name_or_path {path}: config.json has no model_type")
    return config


def _pick(flag_value: Any, default: Any, checkpoint_value: Any) -> Any:
    """A flag left at its default yields to the value recorded in an MGM checkpoint used as the base."""
    if checkpoint_value is not None and (flag_value is None or flag_value == default):
        return checkpoint_value
    return flag_value


def mgm_config_values(model_args, data_args, training_args, base: dict) -> dict[str, Any]:
    """The MGM keys (docs/original.md#config-keys) the training flags write into the model config."""
    from mgm.train.args import DataArguments, ModelArguments

    md, dd = ModelArguments(), DataArguments()
    return {
        "mm_vision_tower": _pick(model_args.vision_tower, md.vision_tower, base.get("mm_vision_tower")),
        "mm_vision_tower_aux": _pick(model_args.vision_tower_aux, md.vision_tower_aux, base.get("mm_vision_tower_aux")),
        "mm_projector_type": _pick(model_args.mm_projector_type, md.mm_projector_type, base.get("mm_projector_type")),
        "mm_vision_select_layer": _pick(model_args.mm_vision_select_layer, md.mm_vision_select_layer,
                                        base.get("mm_vision_select_layer")),
        "mm_vision_select_feature": _pick(model_args.mm_vision_select_feature, md.mm_vision_select_feature,
                                          base.get("mm_vision_select_feature")),
        "image_size_aux": _pick(data_args.image_size_aux, dd.image_size_aux, base.get("image_size_aux")),
        "image_grid": _pick(data_args.image_grid, dd.image_grid, base.get("image_grid")),
        "image_global": _pick(data_args.image_global, dd.image_global, base.get("image_global")),
        "image_aspect_ratio": data_args.image_aspect_ratio,
        "image_grid_pinpoints": data_args.image_grid_pinpoints,
        "tokenizer_padding_side": "right",
        "tokenizer_model_max_length": training_args.model_max_length,
        "tune_mm_mlp_adapter": model_args.tune_mm_mlp_adapter,
        "freeze_mm_mlp_adapter": training_args.freeze_mm_mlp_adapter,
        "mm_use_im_start_end": model_args.mm_use_im_start_end,
        "mm_use_im_patch_token": model_args.mm_use_im_patch_token,
        "mm_projector_lr": training_args.mm_projector_lr,
        "optimize_vision_tower": model_args.optimize_vision_tower,
        "optimize_vision_tower_aux": model_args.optimize_vision_tower_aux,
        "drop_path": model_args.drop_path,
        "use_mm_proj": True,
    }


def _quantization_kwargs(training_args, dtype: torch.dtype) -> dict:
    if training_args.bits not in (4, 8):
        return {}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("--bits 4/8 needs bitsandbytes: pip install 'mgm[quant]'") from None
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=training_args.bits == 4, load_in_8bit=training_args.bits == 8,
            llm_int8_skip_modules=list(NOT_QUANTIZED), llm_int8_threshold=6.0, llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=training_args.double_quant,
            bnb_4bit_quant_type=training_args.quant_type),
        "device_map": {"": training_args.device},
    }


def _quiet_load(fn, *args, **kwargs):
    """Call a `from_pretrained` without transformers' table of the (expected) fresh MGM modules."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return fn(*args, **kwargs)
    finally:
        hf_logging.set_verbosity(level)


def load_mgm_model(path: str, config, causal_cls, family, load_kwargs: dict) -> nn.Module:
    """HF loading of the LLM (and, for an MGM checkpoint, every weight it holds), then the towers from their
    folders under the original precedence (`load_tower_weights`), gathered under ZeRO-3."""
    hf_from_pretrained = family.causal_base.from_pretrained.__func__
    model = _quiet_load(hf_from_pretrained, causal_cls, path, config=config, **load_kwargs)
    inner = model.get_model()
    towers = [p for name in ("vision_tower", "vision_tower_aux") if getattr(inner, name, None) is not None
              for p in getattr(inner, name).parameters()]
    with gathered(towers, modifier_rank=0):
        model.tower_weight_sources = inner.load_tower_weights(str(path))
    return model


def reinit_multimodal_modules(model: nn.Module) -> None:
    """PyTorch default initialisation of projector and mining modules (the original made them fresh)."""
    from mgm.model.vision_encoder import MINING_NAMES

    inner = unwrap(model).get_model()
    modules = [inner.mm_projector] + [getattr(inner, n) for n in MINING_NAMES if getattr(inner, n, None) is not None]
    params = [p for m in modules for p in m.parameters()]
    with gathered(params, modifier_rank=0), torch.no_grad():
        for module in modules:
            for sub in module.modules():
                if isinstance(sub, (nn.Linear, nn.LayerNorm)):
                    sub.reset_parameters()


def grow_embeddings(model: nn.Module, tokenizer, mean_init: bool) -> int:
    """Resize the token embeddings to the tokenizer (never shrink, docs/original.md#fixed-defects); new rows = mean of the
    old rows (input and output) when `mean_init`, as the original. Returns the number of new rows."""
    base = unwrap(model)
    emb = base.get_input_embeddings().weight
    old = int(getattr(emb, "ds_shape", emb.shape)[0])
    new = len(tokenizer)
    if new <= old:
        return 0
    base.resize_token_embeddings(new, mean_resizing=False)
    if mean_init:
        weights = [base.get_input_embeddings().weight]
        if base.get_output_embeddings() is not None:
            weights.append(base.get_output_embeddings().weight)
        with gathered(weights, modifier_rank=0), torch.no_grad():
            for w in weights:
                w[old:] = w[:old].mean(dim=0, keepdim=True)
    return new - old


def add_image_tokens(model: nn.Module, tokenizer, model_args) -> int:
    """`<im_patch>` and `<im_start>`/`<im_end>` tokens (docs/original.md#init-helpers initialize_vision_tokenizer)."""
    from mgm.data.tokenizer_setup import image_token_groups

    added = 0
    for group in image_token_groups(model_args.mm_use_im_patch_token, False):  # zero-initialised rows
        tokenizer.add_tokens(list(group), special_tokens=True)
        added += grow_embeddings(model, tokenizer, mean_init=False)
    for group in image_token_groups(False, model_args.mm_use_im_start_end):  # mean-initialised rows
        tokenizer.add_tokens(list(group), special_tokens=True)
        new = grow_embeddings(model, tokenizer, mean_init=True)
        added += new
        if model_args.pretrain_mm_mlp_adapter and new:
            from mgm.train.checkpoint import read_adapter_file

            rows = read_adapter_file(model_args.pretrain_mm_mlp_adapter).get("model.embed_tokens.weight")
            if rows is not None:
                weight = unwrap(model).get_input_embeddings().weight
                with gathered([weight], modifier_rank=0), torch.no_grad():
                    if rows.shape == weight.shape:
                        weight[-new:] = rows[-new:].to(weight.dtype)
                    elif rows.shape[0] == new:
                        weight[-new:] = rows.to(weight.dtype)
                    else:
                        raise UserError(f"--pretrain_mm_mlp_adapter: model.embed_tokens.weight has shape "
                                        f"{tuple(rows.shape)}; expected {tuple(weight.shape)} or ({new}, ...)")
    return added


def lora_target_pattern(model: nn.Module) -> str:
    """Regex of the LLM's Linear layers (leaf names as the original collected them), never inside the
    towers, projector or mining modules (which already exist here, unlike in the original), nor lm_head."""
    import re

    leaves = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not any(w in name for w in MULTIMODAL_WORDS):
            leaves.add(name.split(".")[-1])
    leaves.discard("lm_head")
    if not leaves:
        raise UserError("--lora_enable: the LLM has no Linear layers to adapt")
    excluded = "|".join(MULTIMODAL_WORDS)
    return rf"^(?!.*(?:{excluded})).*\.(?:{'|'.join(sorted(map(re.escape, leaves)))})$"


def apply_lora(model: nn.Module, training_args) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=training_args.lora_r, lora_alpha=training_args.lora_alpha,
                        target_modules=lora_target_pattern(model), lora_dropout=training_args.lora_dropout,
                        bias=training_args.lora_bias, task_type="CAUSAL_LM")
    if training_args.bits == 16 and not training_args.use_cpu:  # CPU: fp32 weights under autocast (see above)
        if training_args.bf16:
            model.to(torch.bfloat16)
        elif training_args.fp16:
            model.to(torch.float16)
    return get_peft_model(model, config)


def set_trainable(model: nn.Module, model_args, training_args, *, lora: bool) -> None:
    """The requires_grad set of every parameter for this stage (see module docstring)."""
    from mgm.model.vision_encoder import MINING_NAMES

    base = unwrap(model)
    stage1 = bool(model_args.tune_mm_mlp_adapter)
    if not lora:
        base.requires_grad_(not stage1)
        if model_args.freeze_backbone and not stage1:
            for name, p in base.get_model().named_parameters():
                if not any(w in name for w in MULTIMODAL_WORDS):
                    p.requires_grad_(False)
    inner = base.get_model() if hasattr(base, "get_model") else None
    tower = getattr(inner, "vision_tower", None)
    if tower is None:
        return
    tower.requires_grad_(False)
    if model_args.optimize_vision_tower:
        layers = tower.vision_tower.vision_model.encoder.layers
        for layer in layers[len(layers) // 2:]:
            layer.requires_grad_(True)
    aux = getattr(inner, "vision_tower_aux", None)
    if aux is not None:
        aux.requires_grad_(False)
        if model_args.optimize_vision_tower_aux:
            for stage in aux.vision_stages:
                stage.blocks[-1].requires_grad_(True)
    inner.mm_projector.requires_grad_(not training_args.freeze_mm_mlp_adapter)
    for name in MINING_NAMES:
        module = getattr(inner, name, None)
        if module is not None:
            module.requires_grad_(True)
    if model_args.mm_use_im_start_end and stage1:
        base.get_input_embeddings().requires_grad_(True)
        if base.get_output_embeddings() is not None:
            base.get_output_embeddings().requires_grad_(False)


def _fix_kbit_dtypes(model: nn.Module, training_args) -> None:
    """QLoRA post-fix of the original (step 11): LoRA layers in bf16, LLM norms in fp32, head/embeddings bf16."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if any(w in name for w in MULTIMODAL_WORDS):
            continue
        if isinstance(module, LoraLayer) and training_args.bf16:
            module.to(torch.bfloat16)
        elif "norm" in name:
            module.to(torch.float32)
        elif ("lm_head" in name or "embed_tokens" in name) and training_args.bf16:
            weight = getattr(module, "weight", None)
            if weight is not None and weight.dtype == torch.float32:
                module.to(torch.bfloat16)


def register_zero3_external_parameters(model: nn.Module) -> None:
    """Parameters used outside their own module's forward must be gathered by DeepSpeed around the
    forward that uses them: CLIP's class/position embeddings (read in the tower's forward), the key/value
    parameters of the mining modules and the token embedding (read by the causal LM's forward). DeepSpeed
    would discover them at the first read, but only on the ranks that read them (see below)."""
    from mgm.model.vision_encoder import MINING_NAMES

    import deepspeed

    base = unwrap(model)
    inner = base.get_model()
    tower = getattr(inner, "vision_tower", None)
    if tower is not None:
        emb = tower.vision_tower.vision_model.embeddings
        # SigLIP has no class embedding; `is not None`, never truthiness: ZeRO-3 partitions leave empty tensors
        for p in (getattr(emb, "class_embedding", None), emb.position_embedding.weight):
            if p is not None:
                deepspeed.zero.register_external_parameter(tower, p)
    for name in MINING_NAMES[1:]:
        module = getattr(inner, name, None)
        if module is not None:
            for p in module.parameters():
                deepspeed.zero.register_external_parameter(base, p)
    # The splice reads `embed_tokens.weight.device` for text-only rows only. Under ZeRO-3 reading a released
    # parameter inside the forward gathers it, so ranks with and without text-only rows in their batch would
    # run different collectives and hang. As an external parameter of the causal LM the embedding stays
    # gathered for the whole forward on every rank, which makes that read free.
    deepspeed.zero.register_external_parameter(base, base.get_input_embeddings().weight)


def build_training_setup(model_args, data_args, training_args, attn_implementation: str | None = None
                         ) -> TrainingSetup:
    """Model + tokenizer + image processor for this run, with the stage's trainable set applied."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mgm.chat_template_conversation import CHAT_TEMPLATE, JinjaConversation
    from mgm.data.tokenizer_setup import setup_tokenizer_for_version
    from mgm.model.families import any_family, classes_for_model_type, family_classes, family_for_llm

    path = model_args.model_name_or_path
    if not path:
        raise UserError("--model_name_or_path is required")
    if training_args.bits in (4, 8) and not training_args.lora_enable:
        raise UserError(f"--bits {training_args.bits} quantises the LLM, which can then only be trained through "
                        "LoRA: add --lora_enable True")
    base_cfg = read_base_config(path, training_args.cache_dir)
    base_family = any_family(base_cfg["model_type"])
    is_mgm_checkpoint = base_cfg["model_type"] in family_classes() or (
        base_family is not None and base_family.model_type == base_cfg["model_type"])  # an mgm_<type> one
    multimodal = bool(model_args.vision_tower or (is_mgm_checkpoint and base_cfg.get("mm_vision_tower")))
    data_args.is_multimodal = multimodal
    if model_args.tune_mm_mlp_adapter and not multimodal:
        raise UserError("--tune_mm_mlp_adapter True (stage 1) needs --vision_tower")
    # --bf16 loads bf16 weights, as the original did; on the CPU the weights stay fp32 under bf16 autocast
    # (CPU LayerNorm kernels reject bf16 weights with the fp32 inputs autocast gives them).
    dtype = torch.bfloat16 if training_args.bf16 and not training_args.use_cpu else torch.float32
    attn = resolve_attn_implementation(model_args.attn_implementation, attn_implementation)
    load_kwargs: dict = {"dtype": dtype, "attn_implementation": attn, "cache_dir": training_args.cache_dir,
                         **_quantization_kwargs(training_args, compute_dtype(training_args))}

    family = None
    if multimodal:
        family = family_for_llm(base_cfg["model_type"])
        config_cls, _, causal_cls = classes_for_model_type(family.model_type)
        values = {k: v for k, v in base_cfg.items() if k not in _DROP_KEYS}
        values.update(mgm_config_values(model_args, data_args, training_args, base_cfg))
        config = config_cls(**values)
        model = load_mgm_model(path, config, causal_cls, family, load_kwargs)
    else:
        model = _quiet_load(AutoModelForCausalLM.from_pretrained, path, **load_kwargs)
    model.config.use_cache = False
    known = family or any_family(base_cfg["model_type"])
    leaves = known.zero3_leaf_modules if known else ()
    if known is not None and known.model_type == known.legacy_model_type:  # a derived row: read off the model
        from mgm.model.families import moe_leaf_types

        leaves = moe_leaf_types(model)
    if zero3_enabled() and leaves:
        from deepspeed.utils import set_z3_leaf_modules

        set_z3_leaf_modules(model, list(leaves))
        logger.info("ZeRO-3: %s gather their parameters as one leaf module each",
                    ", ".join(cls.__name__ for cls in leaves))
    if training_args.bits in (4, 8):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(training_args.gradient_checkpointing))
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()

    tokenizer = AutoTokenizer.from_pretrained(path, cache_dir=training_args.cache_dir,
                                              model_max_length=training_args.model_max_length, padding_side="right")
    tokenizer, template_name, _ = setup_tokenizer_for_version(tokenizer, model_args.version or "v0")
    if template_name == CHAT_TEMPLATE:  # the checkpoint says which template it was trained with, and its text
        model.config.conv_template = CHAT_TEMPLATE
        model.config.conv_chat_template = JinjaConversation.from_tokenizer(tokenizer).chat_template
    grow_embeddings(model, tokenizer, mean_init=True)

    processor = None
    report = None
    if multimodal:
        from mgm.model.builder import build_image_processor

        if not is_mgm_checkpoint:
            reinit_multimodal_modules(model)
        if model_args.pretrain_mm_mlp_adapter:
            report = load_pretrain_adapter(model, model_args.pretrain_mm_mlp_adapter,
                                           optimize_vision_tower_aux=model_args.optimize_vision_tower_aux)
        add_image_tokens(model, tokenizer, model_args)
        processor = build_image_processor(model)
        if zero3_enabled():
            register_zero3_external_parameters(model)
        if hasattr(model.config, "drop_path"):
            del model.config.drop_path  # not a key of released configs (docs/original.md#config-keys); the towers are built

    lora = bool(training_args.lora_enable)
    if lora:
        model = apply_lora(model, training_args)
    set_trainable(model, model_args, training_args, lora=lora)
    if training_args.bits in (4, 8) and not training_args.use_cpu:
        _fix_kbit_dtypes(model, training_args)

    stage = "llm" if not multimodal else ("pretrain" if model_args.tune_mm_mlp_adapter else "finetune")
    return TrainingSetup(model, tokenizer, template_name, processor, multimodal, stage, lora, report)
