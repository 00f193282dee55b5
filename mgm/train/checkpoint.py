"""What training writes and reads: stage-1 `mm_projector.bin`, LoRA extras, pretrain-adapter loading, resume.

File layouts follow the original (docs/original.md#stage-1-adapter):
- stage 1: `<out>/mm_projector.bin` (a flat `torch.save` dict of every parameter whose name contains
  `mm_projector`, `vision_resampler`, `vlm_att`, `vlm_uni`, `vision_tower`, `vision_fpn` or
  `vision_stages` — plus the token embeddings with `mm_use_im_start_end` — full keys such as
  `model.mm_projector.0.weight`, on CPU) and `<out>/config.json`. A final save into a folder named
  `checkpoint-*` goes to `<parent>/mm_projector/<name>.bin`, as the original did.
- LoRA: the PEFT adapter files, `config.json` and `non_lora_trainables.bin` (every trainable non-LoRA
  parameter, keys as PEFT names them: `base_model.model.model.mm_projector.0.weight`).

Under DeepSpeed ZeRO-3 every parameter read or written here is gathered first (`gathered`), so the
files hold whole tensors and every rank ends with the same values.

Resume: a folder is resumable only if it has `trainer_state.json`, optimizer state (`optimizer.pt` or a
DeepSpeed `global_step*` folder) and weights. The original's stage-1 `checkpoint-N` folders (adapter only)
and final stage-1 folders are therefore never auto-resumed (docs/original.md#fixed-defects); ours also carry the optimizer,
scheduler and RNG state, so they resume for real.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from mgm.errors import UserError

logger = logging.getLogger(__name__)

ADAPTER_KEYWORDS = ("mm_projector", "vision_resampler", "vlm_att", "vlm_uni", "vision_tower", "vision_fpn",
                    "vision_stages")
EMBEDDING_KEYWORDS = ("embed_tokens", "embed_in")
ADAPTER_FILE = "mm_projector.bin"
NON_LORA_FILE = "non_lora_trainables.bin"
TRAINER_STATE = "trainer_state.json"
PEFT_PREFIX = "base_model.model."
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


# ---------------------------------------------------------------------------------------------------
# ZeRO-3 helpers


def zero3_enabled() -> bool:
    """True when the Trainer's DeepSpeed config uses ZeRO stage 3 (parameters are partitioned)."""
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - transformers always has it
        return False
    return bool(is_deepspeed_zero3_enabled())


def _is_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


@contextlib.contextmanager
def gathered(params: Iterable[torch.Tensor], modifier_rank: int | None = None) -> Iterator[None]:
    """Make ZeRO-3-partitioned `params` whole inside the block (a no-op for ordinary tensors).

    With `modifier_rank=0`, what rank 0 writes into them is broadcast to every rank on exit.
    """
    params = [p for p in params if _is_partitioned(p)]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def gather_to_cpu(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{name: CPU copy of the whole tensor} for (possibly ZeRO-3-partitioned) parameters, one at a time."""
    out: dict[str, torch.Tensor] = {}
    for name, param in named:
        with gathered([param]):
            out[name] = param.detach().cpu().clone()
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The MGM causal LM inside a PEFT / DeepSpeed / DDP wrapper."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif type(model).__name__.startswith("Peft") and hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def strip_peft_prefix(name: str) -> str:
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


# ---------------------------------------------------------------------------------------------------
# stage-1 adapter


def adapter_keys(model: nn.Module, include_embeddings: bool = False) -> list[str]:
    """Names (original full keys) of the parameters `mm_projector.bin` holds (docs/original.md#stage-1-adapter)."""
    words = ADAPTER_KEYWORDS + (EMBEDDING_KEYWORDS if include_embeddings else ())
    return [name for name, _ in unwrap(model).named_parameters() if any(w in name for w in words)]


def adapter_state_dict(model: nn.Module, include_embeddings: bool = False) -> dict[str, torch.Tensor]:
    """CPU copies of the adapter parameters, gathered from ZeRO-3, keyed as the original saved them."""
    base = unwrap(model)
    wanted = set(adapter_keys(base, include_embeddings))
    return gather_to_cpu((name, p) for name, p in base.named_parameters() if name in wanted)


def adapter_path(output_dir: str | Path, final: bool) -> Path:
    """Where `mm_projector.bin` goes: `<out>/mm_projector.bin`, or, for a final save into a folder named
    `checkpoint-*`, `<parent>/mm_projector/<name>.bin` (the original rule)."""
    out = Path(output_dir)
    if final and out.name.startswith("checkpoint-"):
        return out.parent / "mm_projector" / f"{out.name}.bin"
    return out / ADAPTER_FILE


def save_adapter(model: nn.Module, output_dir: str | Path, *, is_main_process: bool, final: bool,
                 include_embeddings: bool = False) -> Path:
    """Write `mm_projector.bin` + `config.json` (every rank must call this under ZeRO-3; rank 0 writes)."""
    state = adapter_state_dict(model, include_embeddings)
    path = adapter_path(output_dir, final)
    if is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        save_config(model, output_dir)
    return path


def save_config(model: nn.Module, output_dir: str | Path) -> None:
    """config.json with `architectures` set, as `save_pretrained` would write it."""
    base = unwrap(model)
    base.config.architectures = [type(base).__name__]
    base.config.save_pretrained(str(output_dir))


def read_adapter_file(file: str | Path) -> dict[str, torch.Tensor]:
    """A stage-1 adapter as a flat {full key: tensor} dict (the `{'model': {...}}` form is accepted too)."""
    file = Path(file)
    if not file.is_file():
        raise UserError(f"--pretrain_mm_mlp_adapter {file} does not exist (expected the mm_projector.bin written "
                        "by stage 1)")
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code objects, a truncated file, ...
        raise UserError(f"--pretrain_mm_mlp_adapter {file} cannot be read as a tensor dict: {exc}") from None
    if not isinstance(state, dict):
        raise UserError(f"--pretrain_mm_mlp_adapter {file} holds a {type(state).__name__}, not a dict of tensors")
    if "model" in state and isinstance(state["model"], dict):  # older LLaVA form: projector weights only
        state = {"model.mm_projector." + k: v for k, v in state["model"].items()}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _load_group(model: nn.Module, state: dict[str, torch.Tensor], prefix: str, file: Path,
                require_complete: bool) -> int:
    """Copy the keys of `state` starting with `prefix` into the model; returns how many were loaded.

    `require_complete`: every model parameter under `prefix` must be present (else nothing is loaded).
    """
    params = {n: p for n, p in model.named_parameters() if n.startswith(prefix)}
    if not params:
        return 0
    found = {k: v for k, v in state.items() if k in params}
    if require_complete and len(found) < len(params):
        return 0
    for key, value in found.items():
        param = params[key]
        shape = tuple(getattr(param, "ds_shape", param.shape))
        if tuple(value.shape) != shape:
            raise UserError(f"{file}: {key} has shape {tuple(value.shape)} but the model expects {shape}; the "
                            "adapter was trained for a different LLM or tower")
    with gathered([params[k] for k in found], modifier_rank=0), torch.no_grad():
        for key, value in found.items():
            params[key].data.copy_(value.to(dtype=params[key].dtype, device=params[key].device))
    return len(found)


def load_pretrain_adapter(model: nn.Module, file: str | Path, *, optimize_vision_tower_aux: bool = False
                          ) -> dict[str, int]:
    """Load a stage-1 `mm_projector.bin` into a stage-2 model, as the original consumers did (docs/original.md#stage-1-adapter).

    - projector (`mm_projector.*`): required;
    - mining modules (`vlm_uni_*`): loaded when present (a warning when the model has them and the file not);
    - CLIP tower: loaded only when the file holds its complete key set;
    - ConvNeXt tower: only with `optimize_vision_tower_aux` (the frozen tower keeps the folder's weights).
    Returns {group: number of tensors loaded}.
    """
    file = Path(file)
    base = unwrap(model)
    state = read_adapter_file(file)
    report = {"mm_projector": _load_group(base, state, "model.mm_projector.", file, require_complete=False)}
    if report["mm_projector"] == 0:
        raise UserError(f"--pretrain_mm_mlp_adapter {file} holds no model.mm_projector.* weights for this model "
                        f"(keys found: {', '.join(list(state)[:4]) or 'none'})")
    for name in ("vlm_uni_query_projector", "vlm_uni_aux_projector", "vlm_uni_val_projector"):
        report[name] = _load_group(base, state, f"model.{name}.", file, require_complete=False)
        has_module = any(n.startswith(f"model.{name}.") for n, _ in base.named_parameters())
        if has_module and report[name] == 0:
            logger.warning("%s has no %s weights: the module keeps its fresh initialisation", file, name)
    report["vision_tower"] = _load_group(base, state, "model.vision_tower.vision_tower.", file, require_complete=True)
    if optimize_vision_tower_aux:
        report["vision_tower_aux"] = _load_group(base, state, "model.vision_tower_aux.", file, require_complete=True)
    return report


# ---------------------------------------------------------------------------------------------------
# LoRA


def lora_state_dict(model: nn.Module, bias: str) -> dict[str, torch.Tensor]:
    """LoRA tensors (+ biases per `bias`: 'none', 'all', 'lora_only'), gathered, keyed as PEFT names them.

    'lora_only' keeps the biases of the layers that carry LoRA weights (the original's loop for this
    case was broken, docs/original.md#fixed-defects).
    """
    named = list(model.named_parameters())
    if bias == "none":
        keep = [(n, p) for n, p in named if "lora_" in n]
    elif bias == "all":
        keep = [(n, p) for n, p in named if "lora_" in n or "bias" in n]
    elif bias == "lora_only":
        lora_layers = {n.split("lora_")[0] for n, _ in named if "lora_" in n}
        keep = [(n, p) for n, p in named
                if "lora_" in n or (n.endswith("bias") and any(n.startswith(layer) for layer in lora_layers))]
    else:
        raise UserError(f"--lora_bias {bias!r} is unknown; valid: none, all, lora_only")
    return gather_to_cpu(keep)


def non_lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter that is not a LoRA tensor (projector, mining modules, ...), gathered."""
    return gather_to_cpu((n, p) for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n)


def save_lora(model: nn.Module, output_dir: str | Path, *, bias: str, is_main_process: bool, tokenizer=None) -> None:
    """The original LoRA output: adapter files + `config.json` + `non_lora_trainables.bin` (+ tokenizer)."""
    state = lora_state_dict(model, bias)
    non_lora = non_lora_state_dict(model)
    if not is_main_process:
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(model, out)
    model.save_pretrained(str(out), state_dict=state)
    torch.save(non_lora, out / NON_LORA_FILE)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))


def load_non_lora(model: nn.Module, folder: str | Path) -> int:
    """Load `non_lora_trainables.bin` of a LoRA checkpoint back into a PEFT model (resume); returns count."""
    file = Path(folder) / NON_LORA_FILE
    if not file.is_file():
        return 0
    state = torch.load(str(file), map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    found = {k: v for k, v in state.items() if k in params}
    with gathered([params[k] for k in found], modifier_rank=0), torch.no_grad():
        for key, value in found.items():
            params[key].data.copy_(value.to(dtype=params[key].dtype, device=params[key].device))
    return len(found)


# ---------------------------------------------------------------------------------------------------
# resume


def resumable_reason(folder: str | Path) -> str | None:
    """None when `folder` is a complete trainer checkpoint, else why it cannot be resumed from."""
    path = Path(folder)
    if not path.is_dir():
        return f"{path} is not a folder"
    names = {p.name for p in path.iterdir()}
    has_ds = any(n.startswith("global_step") and (path / n).is_dir() for n in names)
    has_optimizer = has_ds or bool(names & {"optimizer.pt", "optimizer.bin"})
    has_weights = has_ds or bool(names & {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                                          "pytorch_model.bin.index.json", "adapter_model.safetensors",
                                          "adapter_model.bin", ADAPTER_FILE})
    if ADAPTER_FILE in names and not (TRAINER_STATE in names and has_optimizer):
        return (f"{path} is a stage-1 adapter folder (mm_projector.bin) without optimizer or trainer state; it "
                f"cannot be resumed (use it as --pretrain_mm_mlp_adapter {path / ADAPTER_FILE} for stage 2)")
    if TRAINER_STATE not in names:
        return f"{path} has no {TRAINER_STATE}"
    if not has_optimizer:
        return (f"{path} has no optimizer state (optimizer.pt or a DeepSpeed global_step* folder); resuming from it "
                "would restart the optimizer and scheduler")
    if not has_weights:
        return f"{path} has no model weights"
    return None


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """`checkpoint-N` folders of `output_dir`, oldest step first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def find_resumable_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """(latest resumable `checkpoint-N` in `output_dir` or None, reasons the newer ones were passed over)."""
    skipped: list[str] = []
    for folder in reversed(checkpoint_folders(output_dir)):
        reason = resumable_reason(folder)
        if reason is None:
            return folder, skipped
        skipped.append(reason)
    return None, skipped


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: the flag's folder (checked), `True` = latest in `output_dir`, or,
    like the original, the latest resumable `checkpoint-N` in `output_dir` when the flag is not given."""
    value = resume_from_checkpoint
    if value is not None and str(value).lower() not in ("", "true", "false"):
        reason = resumable_reason(value)
        if reason is not None:
            raise UserError(f"--resume_from_checkpoint {value}: {reason}")
        return Path(value)
    if value is not None and str(value).lower() == "false":
        return None
    folder, skipped = find_resumable_checkpoint(output_dir)
    for reason in skipped:
        logger.warning("not resuming from it: %s", reason)
    if folder is None and value is not None and str(value).lower() == "true":
        raise UserError(f"--resume_from_checkpoint True: no resumable checkpoint-N folder in {output_dir}"
                        + (f" ({'; '.join(skipped)})" if skipped else ""))
    return folder


def read_trainer_state(folder: str | Path) -> dict:
    return json.loads((Path(folder) / TRAINER_STATE).read_text())


def is_main_process() -> bool:
    """Rank 0 (or no distributed run)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
