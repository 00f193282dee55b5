"""Tiny MGM checkpoints that vLLM's CPU attention accepts (head_dim >= 32), made with mgm.zoo.

The default tiny zoo uses head_dim 16, which vLLM's CPU backend rejects; these are the same
checkpoints (original on-disk layout, the zoo's towers and tokenizers) with 2 query heads of 32.
`build_vllm_zoo(out_dir, names=None)` -> {name: checkpoint folder}; a second call reuses the folders.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mgm.errors import UserError

# name -> (LLM family of mgm.zoo.llms, key/value heads, build_mgm_checkpoint options); HD checkpoints get
# 1024 positions (an HD image is 5 x 64 tokens), the others the zoo's 512
VLLM_CHECKPOINTS: dict[str, tuple[str, int, dict[str, object]]] = {
    "MGM-Tiny-Vicuna-H32": ("vicuna", 2, {}),
    "MGM-Tiny-Vicuna-H32-HD": ("vicuna", 2, {"hd": True, "model_max_length": 1024}),
    "MGM-Tiny-Mixtral-H32": ("mixtral", 1, {}),
    "MGM-Tiny-Mixtral-H32-HD": ("mixtral", 1, {"hd": True, "model_max_length": 1024}),
    "MGM-Tiny-LLaMA3-H32": ("llama3", 1, {}),
    "MGM-Tiny-Gemma-H32": ("gemma", 1, {}),
    "MGM-Tiny-Mistral-H32": ("mistral", 1, {}),
    "MGM-Tiny-Yi-H32": ("yi", 2, {"shards": 2}),
}
NUM_HEADS = 2  # hidden 64 / 2 = head_dim 32


def build_vllm_zoo(out_dir: str | Path, names: list[str] | None = None, seed: int = 0) -> dict[str, str]:
    """Build (or reuse) the checkpoints `names` (default all of VLLM_CHECKPOINTS) under `out_dir`."""
    from mgm.zoo.checkpoint import build_mgm_checkpoint
    from mgm.zoo.llms import build_llm, get_llm_spec
    from mgm.zoo.towers import CLIP_TOWER_NAME, CONVNEXT_TOWER_NAME, build_clip_tower, build_convnext_tower

    names = list(VLLM_CHECKPOINTS) if names is None else names
    unknown = [n for n in names if n not in VLLM_CHECKPOINTS]
    if unknown:
        raise UserError(f"unknown tiny vLLM checkpoints {unknown}; valid: {', '.join(VLLM_CHECKPOINTS)}")
    root = Path(out_dir)
    clip_dir, conv_dir = root / "OpenAI" / CLIP_TOWER_NAME, root / "OpenAI" / CONVNEXT_TOWER_NAME
    if not (clip_dir / "config.json").is_file():
        clip_dir.mkdir(parents=True, exist_ok=True)
        build_clip_tower(clip_dir, seed)
    if not (conv_dir / "open_clip_config.json").is_file():
        conv_dir.mkdir(parents=True, exist_ok=True)
        build_convnext_tower(conv_dir, seed)
    out: dict[str, str] = {}
    for name in names:
        family, kv_heads, options = VLLM_CHECKPOINTS[name]
        positions = int(options.get("model_max_length", 512))  # type: ignore[call-overload]
        spec = dataclasses.replace(get_llm_spec(family), num_attention_heads=NUM_HEADS, num_key_value_heads=kv_heads,
                                   max_position_embeddings=positions)
        llm_dir = root / "LLM" / f"{family}-h32-kv{kv_heads}-p{positions}"
        if not (llm_dir / "generation_config.json").is_file():
            llm_dir.mkdir(parents=True, exist_ok=True)
            build_llm(spec, llm_dir, seed)
        ckpt = root / "MGM" / name
        done = ckpt / "mgm-tiny.json"
        if not done.is_file():
            build_mgm_checkpoint(ckpt, spec=spec, llm_dir=llm_dir, clip_dir=clip_dir, convnext_dir=conv_dir,
                                 seed=seed, name=name, **options)  # type: ignore[arg-type]
            done.write_text(json.dumps({"family": family, "kv_heads": kv_heads, **options}) + "\n")
        out[name] = str(ckpt.resolve())
    return out
