"""`load_pretrained_model`: the original entry point for loading an MGM checkpoint (docs/original.md#load-pretrained-model).

The family comes from `config.json`'s `model_type`, never from the folder name. Three layouts load:
a full checkpoint; a projector-only folder (`mm_projector.bin` + `config.json`) over `model_base`;
a LoRA folder (`adapter_config.json`, `non_lora_trainables.bin`) merged onto `model_base`.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch

from mgm.data.tokenizer_setup import add_image_tokens
from mgm.errors import UserError
from mgm.model.families import classes_for_model_type, family_for_llm
from mgm.model.fast_linear import use_fast_linears
from mgm.model.sentencepiece_decode import load_tokenizer
from mgm.profile import profile_for_model
from mgm.registration import register_auto_classes

logger = logging.getLogger(__name__)

# Modules that stay in the compute dtype when the LLM is quantised (towers, projector, mining, head).
NOT_QUANTIZED = ["mm_projector", "vision_tower", "vision_tower_aux", "vlm_uni_query_projector",
                 "vlm_uni_aux_projector", "vlm_uni_val_projector", "lm_head"]


def resolve_device(device: str | None) -> str:
    """'auto'/None -> cuda, mps or cpu; 'cuda' without CUDA falls back to cpu with a warning."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"device {device!r} requested but CUDA is not available; using cpu")
        return "cpu"
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps requested but MPS is not available on this machine; valid here: cpu")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N, mps")
    return device


def device_map_for(device: str, device_map, quantized: bool):
    """The `device_map` handed to `from_pretrained`, or None to load then `.to(device)`.

    As the original builder: only a bare `cuda` spreads the model with `device_map` (default "auto");
    `cuda:N` (and cpu/mps) keeps the whole model on that one device; quantized weights must be placed
    at load time, so they always get a map.
    """
    if device == "cuda" and device_map is not None:
        return device_map
    return {"": device} if quantized else None


def default_dtype(device: str) -> torch.dtype:
    """float32 on CPU; bf16 on GPUs that support it, else fp16."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def read_config_json(folder: Path) -> dict:
    file = folder / "config.json"
    if not file.is_file():
        raise UserError(f"{folder} has no config.json: not a model checkpoint folder")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{file} is not valid JSON: {exc}") from None


def _attn_implementation(use_flash_attn: bool, device: str) -> str:
    if not use_flash_attn:
        return "sdpa"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        warnings.warn("use_flash_attn requested but flash-attn is not installed; using sdpa")
        return "sdpa"
    if not device.startswith("cuda"):
        warnings.warn("flash-attention needs CUDA; using sdpa")
        return "sdpa"
    return "flash_attention_2"


def load_pretrained_model(model_path, model_base=None, model_name=None, load_8bit=False, load_4bit=False,
                          device_map="auto", device="cuda", use_flash_attn=False, **kwargs):
    """Load an MGM checkpoint: returns `(tokenizer, model, image_processor, context_len)`.

    The model carries its `ModelProfile` (`mgm.profile.profile_of(model)`): template, stop strings,
    end-of-sequence and pad ids, context limit, tokens per image, decoder.

    Extra keyword arguments: `dtype` (torch dtype), `vision_tower_path` / `vision_tower_aux_path`
    (tower folder overrides), `fast_linears` (default True: the LLM's plain linears become
    `mgm.model.fast_linear.FastLinear`, which runs the kernel probed fastest for this CPU and dtype; only
    for unquantised models on the CPU; False keeps `nn.Linear`), `quantization` ("int8" / "int4": weight-only
    LLM linears, `mgm.model.quantize`), anything else goes to `from_pretrained`.
    """
    register_auto_classes()
    path = Path(model_path)
    if not path.is_dir():
        raise UserError(f"model path {model_path} is not a folder")
    raw = read_config_json(path)
    model_type = raw.get("model_type")
    if model_type is None:
        raise UserError(f"{path / 'config.json'} has no model_type")
    config_cls, _, causal_cls = classes_for_model_type(model_type)

    device = resolve_device(device)
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None) or default_dtype(device)
    overrides = {k: kwargs.pop(k) for k in ("vision_tower_path", "vision_tower_aux_path") if k in kwargs}
    fast_linears = bool(kwargs.pop("fast_linears", True))
    quantization = kwargs.pop("quantization", None)
    if quantization is not None and (load_8bit or load_4bit):
        raise UserError("--quantization and --load-8bit/--load-4bit (bitsandbytes) exclude each other: pick one")
    load_kwargs: dict = dict(dtype=dtype, attn_implementation=_attn_implementation(use_flash_attn, device), **kwargs)
    if load_8bit or load_4bit:
        from transformers import BitsAndBytesConfig

        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError("--load-8bit/--load-4bit need bitsandbytes: pip install 'mgm[quant]'") from None
        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=load_8bit, load_in_4bit=load_4bit and not load_8bit,
            bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
            llm_int8_skip_modules=[f"model.{name}" for name in NOT_QUANTIZED[:-1]] + ["lm_head"])
    placement = device_map_for(device, device_map, quantized=load_8bit or load_4bit)
    if placement is not None:
        load_kwargs["device_map"] = placement

    is_lora = (path / "adapter_config.json").is_file()
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
    if model_base is not None and (is_lora or not has_weights):
        base = Path(model_base)
        if not base.is_dir():
            raise UserError(f"--model-base {model_base} is not a folder")
        config = config_cls.from_pretrained(str(path))
        config.name_or_path = str(path)
        trained_vocab, base_vocab = getattr(config, "vocab_size", None), read_config_json(base).get("vocab_size")
        pad = getattr(config, "pad_token_id", None)
        if trained_vocab and base_vocab and trained_vocab != base_vocab:
            config.vocab_size = base_vocab  # training added tokens (a pad): load the base's rows, then grow
            if isinstance(pad, int) and pad >= base_vocab:
                config.pad_token_id = None  # an added pad is not a row of the base yet
        model = causal_cls.from_pretrained(str(base), config=config, **overrides, **load_kwargs)
        if trained_vocab and base_vocab and trained_vocab > base_vocab:
            model.resize_token_embeddings(trained_vocab, mean_resizing=False)
            model.config.pad_token_id = pad
        model.get_model().load_tower_weights_from_folders()
        if is_lora:
            model = _merge_lora(model, path)
        else:
            _load_adapter_file(model, path / "mm_projector.bin")
        tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else base
    elif model_base is None and is_lora:
        raise UserError(f"{path} is a LoRA adapter folder: pass --model-base with the base LLM it was trained on")
    else:
        if not has_weights:
            raise UserError(f"{path} has config.json but no weights (*.safetensors / pytorch_model*.bin); "
                            f"a projector-only folder needs --model-base")
        model = causal_cls.from_pretrained(str(path), **overrides, **load_kwargs)
        tokenizer_dir = path
    tokenizer = load_tokenizer(tokenizer_dir, family_for_llm(model_type).key)

    _add_image_tokens(model, tokenizer)
    if "device_map" not in load_kwargs:
        model.to(device)
    _cast_vision_modules(model, dtype, load_8bit or load_4bit)
    model.eval()  # every module, ConvNeXt drop-path included (docs/original.md#fixed-defects)
    model.requires_grad_(False)
    if quantization is not None:
        from mgm.model.quantize import quantize_llm

        try:
            quantize_llm(model, quantization, skip=tuple(f"model.{name}" for name in NOT_QUANTIZED[:-1]))
        except ValueError as exc:
            raise UserError(f"--quantization {quantization}: {exc}") from None
    if fast_linears and torch.device(device).type == "cpu" and not (load_8bit or load_4bit):
        use_fast_linears(model)  # the model is ours until returned; only the CPU kernels differ

    image_processor = build_image_processor(model)
    context_len = getattr(model.config, "max_sequence_length", None) or 2048
    # every fact a front end needs, decided here once (mgm.profile; read with `profile_of(model)`)
    model.mgm_profile = profile_for_model(model, tokenizer, image_processor)
    return tokenizer, model, image_processor, context_len


def build_image_processor(model):
    """The CLIP tower's processor (from its folder when found, else from the tower's image size)."""
    tower = model.get_vision_tower()
    if tower is None:
        return None
    return image_processor_for_tower(model.get_model().tower_dirs.get("vision_tower"), tower.config.image_size)


def image_processor_for_tower(folder, image_size: int):
    """The processor of the CLIP tower folder `folder` (None/no preprocessor_config: CLIP's at `image_size`)."""
    from mgm.data.image import ImageProcessor

    if folder is not None and (Path(folder) / "preprocessor_config.json").is_file():
        processor = ImageProcessor.from_pretrained(folder)
    else:
        processor = ImageProcessor.for_image_size(image_size)
    if "shortest_edge" not in processor.size and processor.crop_size["height"] != image_size:
        processor = processor.at_size(image_size)  # SigLIP 2 (NaFlex) configs name no size: the tower's own
    processor.image_size_raw = dict(processor.crop_size)
    return processor


def _add_image_tokens(model, tokenizer) -> None:
    if model.get_vision_tower() is None:
        return
    add_image_tokens(tokenizer, model.config)
    # Grow only: shrinking would cut rows a padded vocabulary relies on (docs/original.md#fixed-defects).
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))


def _cast_vision_modules(model, dtype: torch.dtype, quantized: bool) -> None:
    inner = model.get_model()
    device = inner.embed_tokens.weight.device
    for name in NOT_QUANTIZED[:-1]:
        module = getattr(inner, name, None)
        if module is not None:
            module.to(device=device, dtype=dtype)


def _load_adapter_file(model, file: Path) -> None:
    """Load a stage-1 `mm_projector.bin` (projector + mining (+ towers)) non-strictly (docs/original.md#stage-1-adapter)."""
    if not file.is_file():
        raise UserError(f"{file} not found: a projector-only folder needs mm_projector.bin")
    state = torch.load(str(file), map_location="cpu", weights_only=True)
    if "model" in state and isinstance(state["model"], dict):
        state = {"model.mm_projector." + k: v for k, v in state["model"].items()}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any("mm_projector" in k for k in usable):
        raise UserError(f"{file} holds no mm_projector weights matching this model")
    model.load_state_dict(usable, strict=False)


def _merge_lora(model, folder: Path):
    """Load non-LoRA trainables, apply the PEFT adapter and merge it into the weights; returns the merged model."""
    non_lora = folder / "non_lora_trainables.bin"
    if non_lora.is_file():
        state = torch.load(str(non_lora), map_location="cpu", weights_only=True)
        state = {(k[len("base_model.model."):] if k.startswith("base_model.model.") else k): v for k, v in state.items()}
        state = {(k[len("model."):] if k.startswith("model.model.") else k): v for k, v in state.items()}
        model.load_state_dict(state, strict=False)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
