"""Reasoning-driven image generation: the model writes a prompt between `<h>` and `</h>`, a diffusers
text-to-image pipeline draws it (docs/original.md#serving).

- `load_pipeline(path_or_hub_id, device="auto", cpu_offload=False)`: any diffusers text-to-image
  pipeline (SDXL base by default in the CLI/worker flags) from a local folder or a hub id, on any device;
  fp16 on CUDA (the hub's fp16 variant when it has one), fp32 on CPU; optional model CPU offload.
- `hidden_prompt(text, last)`: the text between a `<h>`…`</h>` pair (the CLI takes the LAST pair, the
  worker the FIRST, as the original).
- `generate_image(pipe, prompt, negative_prompt=NEG, **kw)`: one PIL image (pipeline defaults for steps
  and guidance unless given).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from PIL import Image

from mgm.errors import UserError

DEFAULT_GEN_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"

# The negative prompt of the original CLI and worker, word for word (docs/original.md#serving).
NEG = ", ".join([
    "out of frame", "lowres", "text", "error", "cropped", "worst quality", "low quality", "jpeg artifacts",
    "ugly", "duplicate", "morbid", "mutilated", "out of frame", "extra fingers", "mutated hands",
    "poorly drawn hands", "poorly drawn face", "mutation", "deformed", "blurry", "dehydrated", "bad anatomy",
    "bad proportions", "extra limbs", "cloned face", "disfigured", "gross proportions", "malformed limbs",
    "missing arms", "missing legs", "extra arms", "extra legs", "fused fingers", "too many fingers",
    "long neck", "username", "watermark", "signature",
])

H_OPEN, H_CLOSE = "<h>", "</h>"


def hidden_prompt(text: str, last: bool) -> str | None:
    """The image prompt the model wrote inside `<h>`…`</h>`, or None unless both markers occur.

    Same string operations as the original: last=True (CLI) `text.split("<h>")[-1].split("</h>")[0]`;
    last=False (worker) `text.split("<h>")[1].split("</h>")[0]`. Whitespace is kept.
    """
    if H_OPEN not in text or H_CLOSE not in text:
        return None
    parts = text.split(H_OPEN)
    return (parts[-1] if last else parts[1]).split(H_CLOSE)[0]


def _resolve_device(device: str) -> str:
    """The model loader's device rule, except that a missing GPU is an error here (no silent CPU SDXL)."""
    import torch

    from mgm.model.builder import resolve_device

    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use cpu or auto")
    return resolve_device(device)


def load_pipeline(path_or_hub_id: str = DEFAULT_GEN_MODEL, device: str = "auto", cpu_offload: bool = False,
                  dtype: Any = None) -> Any:
    """Load a diffusers text-to-image pipeline (StableDiffusionXLPipeline for SDXL folders).

    A local folder is read as is; anything else is a hub id (offline mode finds it only in the local
    cache). `cpu_offload` keeps weights on the CPU and moves each sub-model to the GPU while it runs
    (needs CUDA). Raises UserError for a missing diffusers install or an unloadable path.
    """
    try:
        import diffusers
        import torch
    except ImportError:
        raise UserError('image generation (--gen) needs diffusers: pip install "mgm[gen]"') from None
    device = _resolve_device(device)
    if dtype is None:
        dtype = torch.float16 if device.startswith(("cuda", "mps")) else torch.float32
    local = Path(path_or_hub_id).expanduser()
    source = str(local) if local.exists() else path_or_hub_id
    if local.exists() and not (local / "model_index.json").is_file():
        raise UserError(f"--gen-model-path {path_or_hub_id}: no model_index.json there (not a diffusers pipeline folder)")
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
    pipe = None
    errors: list[str] = []
    attempts = [{"variant": "fp16"}, {}] if dtype == torch.float16 else [{}]
    for extra in attempts:
        try:
            pipe = diffusers.AutoPipelineForText2Image.from_pretrained(source, **kwargs, **extra)
            break
        except (OSError, ValueError, EnvironmentError) as exc:  # no fp16 variant, not found, offline, ...
            errors.append(f"{type(exc).__name__}: {exc}")
    if pipe is None:
        raise UserError(f"--gen-model-path {path_or_hub_id}: cannot load a text-to-image pipeline "
                        f"({errors[-1].splitlines()[0] if errors else 'unknown error'})")
    if cpu_offload:
        if not device.startswith("cuda"):
            raise UserError("--gen-cpu-offload needs a CUDA device")
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    # diffusers pipelines are not safe to call from two threads at once
    pipe._mgm_lock = threading.Lock()  # type: ignore[attr-defined]
    return pipe


def generate_image(pipe: Any, prompt: str, negative_prompt: str = NEG, **kwargs: Any) -> Image.Image:
    """One image for `prompt` (pipeline defaults for steps/guidance/size unless given in `kwargs`)."""
    lock = getattr(pipe, "_mgm_lock", None) or threading.Lock()
    with lock:
        out = pipe(prompt=prompt, negative_prompt=negative_prompt, **kwargs)
    return out.images[0]
