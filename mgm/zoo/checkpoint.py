"""Literal writer of MGM checkpoints in the original on-disk layout (docs/original.md#config-keys), plus weight I/O.

This module never imports `mgm.model`: it writes the files the original code wrote, from tensors and dicts,
so tests of the real loader compare against an independent description of the format.

Full (stage-2) checkpoint, `build_mgm_checkpoint(...)`:
- `config.json`: the base LLM's config as transformers 4.36/4.38 wrote it (`rope_theta`, `rope_scaling`,
  `torch_dtype`, ...) + `model_type` (`mgm`, `mgm_gemma`, `mgm_mistral`, `mgm_mixtral`, or the legacy
  `mini_gemini*`), `architectures` and every MGM key of docs/original.md#config-keys with the released values scaled to the tiny towers.
- weights: the LLM state dict (same keys as the LLM folder, e.g. Mixtral's `block_sparse_moe.experts.{e}.w1`)
  + `model.mm_projector.{0,2}.*` + the CLIP vision weights under `model.vision_tower.vision_tower.vision_model.*`
  + the ConvNeXt trunk under `model.vision_tower_aux.vision_stem.*` / `vision_stages.*`
  + `model.vlm_uni_{query,aux,val}_projector.{0 (LayerNorm), 1 (Linear)}.*`;
  as `model.safetensors`, `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`, `pytorch_model.bin`
  or `pytorch_model-0000i-of-0000n.bin` + `pytorch_model.bin.index.json`.
- tokenizer files (with MGM's pad-token changes) and `generation_config.json`.

Stage-1 adapter, `write_stage1_adapter(...)`: `mm_projector.bin` (flat dict, full keys, both towers included,
docs/original.md#stage-1-adapter) + `config.json`.

Run `python -m mgm.zoo.tiny --help` to build the whole zoo.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mgm.zoo.random_weights import perturbed, randomize_, seeded_generator

if TYPE_CHECKING:  # imported lazily at run time: llms imports this module
    from mgm.zoo.llms import LLMSpec

WEIGHT_FORMATS = ("safetensors", "bin")
TOWER_MODES = ("same", "perturbed", "none", "partial")
TOWER_PATH_MODES = ("absolute", "relative")

# Prefixes of the MGM-specific weights in a full checkpoint (docs/original.md#checkpoint-layout).
MGM_PREFIXES: tuple[str, ...] = (
    "model.mm_projector.",
    "model.vision_tower.vision_tower.vision_model.",
    "model.vision_tower_aux.vision_stem.",
    "model.vision_tower_aux.vision_stages.",
    "model.vlm_uni_query_projector.",
    "model.vlm_uni_aux_projector.",
    "model.vlm_uni_val_projector.",
)


# ----------------------------------------------------------------------------------------------------
# Weight files


def save_state_dict(state: dict[str, torch.Tensor], folder: str | Path, fmt: str = "safetensors",
                    shards: int = 1) -> list[Path]:
    """Write `state` as HF `save_pretrained` does: one file, or `shards` files + an index.

    Args:
        state: ordered {key: tensor}; shards are contiguous runs of this order, cut at ~equal byte sizes
            (as `max_shard_size` does).
        folder: output folder (created).
        fmt: "safetensors" (`model*.safetensors`, metadata {"format": "pt"}) or "bin" (`pytorch_model*.bin`).
        shards: number of files; 1 writes `model.safetensors` / `pytorch_model.bin` with no index.

    Returns:
        The weight files written (index not included).

    Raises:
        ValueError: bad fmt or shard count.
    """
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"weight format must be one of {WEIGHT_FORMATS}, got {fmt!r}")
    if shards < 1 or shards > len(state):
        raise ValueError(f"shards must be between 1 and {len(state)} (number of tensors), got {shards}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    # Own contiguous memory per tensor: safetensors refuses shared storage, torch.save would keep whole bases.
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    if shards == 1:
        path = out / f"{stem}.{ext}"
        _write_weights(state, path, fmt)
        return [path]
    sizes = [t.numel() * t.element_size() for t in state.values()]
    total = sum(sizes)
    groups: list[list[str]] = [[]]
    running = 0
    for (key, size) in zip(state, sizes):
        # Start a new shard once this one holds its share, keeping enough keys for the remaining shards.
        target = total * len(groups) / shards
        keys_left = len(state) - sum(len(g) for g in groups)
        if groups[-1] and len(groups) < shards and (running + size / 2 > target or keys_left <= shards - len(groups)):
            groups.append([])
        groups[-1].append(key)
        running += size
    weight_map: dict[str, str] = {}
    paths: list[Path] = []
    for i, keys in enumerate(groups, start=1):
        path = out / f"{stem}-{i:05d}-of-{len(groups):05d}.{ext}"
        _write_weights({k: state[k] for k in keys}, path, fmt)
        weight_map.update({k: path.name for k in keys})
        paths.append(path)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return paths


def _write_weights(state: dict[str, torch.Tensor], path: Path, fmt: str) -> None:
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save(state, path)


def load_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint folder written in any of the layouts `save_state_dict` writes.

    Prefers safetensors (index, then single file), then .bin (index, then single file), like transformers.

    Raises:
        FileNotFoundError: no weight file in the folder.
    """
    from safetensors.torch import load_file

    d = Path(folder)
    for stem, ext in (("model", "safetensors"), ("pytorch_model", "bin")):
        index = d / f"{stem}.{ext}.index.json"
        single = d / f"{stem}.{ext}"
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif single.exists():
            files = [single.name]
        else:
            continue
        state: dict[str, torch.Tensor] = {}
        for name in files:
            if ext == "safetensors":
                state.update(load_file(str(d / name)))
            else:
                state.update(torch.load(d / name, map_location="cpu", weights_only=True))
        return state
    raise FileNotFoundError(f"no model.safetensors / pytorch_model.bin (single or indexed) in {d}")


# ----------------------------------------------------------------------------------------------------
# MGM modules


def mgm_extra_state(seed: int, name: str, hidden_size: int, mm_hidden: int, mm_hidden_aux: int
                    ) -> dict[str, torch.Tensor]:
    """Random `mm_projector` (mlp2x_gelu) and `vlm_uni_*` weights with their full checkpoint keys.

    Shapes (H = LLM hidden, D = mm_hidden_size, C = mm_hidden_size_aux):
    mm_projector.0 Linear D->H, .2 Linear H->H; vlm_uni_query_projector = LayerNorm(D), Linear D->D;
    vlm_uni_aux_projector / vlm_uni_val_projector = LayerNorm(C), Linear C->D.
    """
    h, d, c = hidden_size, mm_hidden, mm_hidden_aux
    shapes: dict[str, tuple[int, ...]] = {
        "model.mm_projector.0.weight": (h, d), "model.mm_projector.0.bias": (h,),
        "model.mm_projector.2.weight": (h, h), "model.mm_projector.2.bias": (h,),
    }
    for proj, width in (("query", d), ("aux", c), ("val", c)):
        p = f"model.vlm_uni_{proj}_projector"
        shapes.update({f"{p}.0.weight": (width,), f"{p}.0.bias": (width,),
                       f"{p}.1.weight": (d, width), f"{p}.1.bias": (d,)})
    state = {k: torch.empty(v) for k, v in shapes.items()}
    randomize_(state, seeded_generator(seed, f"mgm/{name}"))
    return state


def tower_state(clip_dir: str | Path, convnext_dir: str | Path
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The tower weights as an MGM checkpoint embeds them, read from the tower folders.

    Returns:
        (clip, convnext): `model.vision_tower.vision_tower.vision_model.*` from the CLIP folder's `vision_model.*`
        keys; `model.vision_tower_aux.vision_stem.*` / `vision_stages.*` from the open_clip file's
        `visual.trunk.stem.*` / `visual.trunk.stages.*` keys (head and text tower dropped).
    """
    clip_sd = load_state_dict(clip_dir)
    clip = {f"model.vision_tower.vision_tower.{k}": v for k, v in clip_sd.items() if k.startswith("vision_model.")}
    oc = torch.load(Path(convnext_dir) / "open_clip_pytorch_model.bin", map_location="cpu", weights_only=True)
    conv: dict[str, torch.Tensor] = {}
    for k, v in oc.items():
        for src, dst in (("visual.trunk.stem.", "vision_stem."), ("visual.trunk.stages.", "vision_stages.")):
            if k.startswith(src):
                conv[f"model.vision_tower_aux.{dst}{k[len(src):]}"] = v
    return clip, conv


def mgm_config(spec: "LLMSpec", llm_config: dict[str, object], *, clip_hidden: int, aux_hidden: int, vision_tower: str,
               vision_tower_aux: str, hd: bool, image_size_aux: int, model_max_length: int,
               legacy_names: bool = False, stage1: bool = False, dtype: str = "float32",
               name_or_path: str = "") -> dict[str, object]:
    """config.json of an MGM checkpoint: the base LLM config as released + the MGM keys (docs/original.md#config-keys).

    Args:
        spec: the LLM family.
        llm_config: the tiny LLM folder's config.json (vocab size and bos/eos/pad ids are taken from it).
        clip_hidden / aux_hidden: `mm_hidden_size` / `mm_hidden_size_aux`.
        vision_tower / vision_tower_aux: tower paths as they will be stored.
        hd: HD variant (`image_grid` 2, `image_global` true).
        image_size_aux: HR input side.
        model_max_length: `tokenizer_model_max_length`.
        legacy_names: write the pre-rename `mini_gemini*` model_type and `MiniGemini*ForCausalLM`.
        stage1: a stage-1 (projector pre-training) config: `tune_mm_mlp_adapter` true, aspect "square".
        dtype: `torch_dtype` of the weights.
        name_or_path: `_name_or_path` (the base LLM path the run started from).

    Returns:
        The dict, keys sorted as transformers writes them.
    """
    ids = {k: llm_config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    cfg = spec.legacy_config(int(llm_config["vocab_size"]), ids, dtype)
    cfg.update({
        "_name_or_path": name_or_path,
        "architectures": [spec.mgm_architecture(legacy_names)],
        "model_type": spec.mgm_model_type(legacy_names),
        "mm_vision_tower": vision_tower,
        "mm_vision_tower_aux": vision_tower_aux,
        "mm_hidden_size": clip_hidden,
        "mm_hidden_size_aux": aux_hidden,
        "mm_projector_type": "mlp2x_gelu",
        "use_mm_proj": True,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "image_size_aux": image_size_aux,
        "image_grid": 2 if hd else 1,
        "image_global": hd,
        "image_aspect_ratio": "square" if stage1 else "pad",
        "image_grid_pinpoints": None,
        "optimize_vision_tower": False,
        "optimize_vision_tower_aux": False,
        "tokenizer_padding_side": "right",
        "tokenizer_model_max_length": model_max_length,
        "tune_mm_mlp_adapter": stage1,
        "freeze_mm_mlp_adapter": False,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_projector_lr": None,
        "use_cache": True,
    })
    return dict(sorted(cfg.items()))


def build_mgm_checkpoint(out_dir: str | Path, *, spec: "LLMSpec", llm_dir: str | Path, clip_dir: str | Path,
                         convnext_dir: str | Path, seed: int, name: str, hd: bool = False,
                         fmt: str = "safetensors", shards: int = 1, towers: str = "same",
                         tower_paths: str = "absolute", legacy_names: bool = False, extra_keys: bool = False,
                         image_size_aux: int | None = None, model_max_length: int = 512,
                         dtype: str | None = None) -> dict[str, object]:
    """Write a complete tiny MGM checkpoint in the original layout.

    Args:
        out_dir: checkpoint folder (its name should contain "mgm", as the original builder requires).
        spec: LLM family; `llm_dir` is its tiny LLM folder (weights, config, tokenizer are taken from there).
        clip_dir / convnext_dir: the tower folders (embedded copies are read from them).
        seed: seed of the MGM modules (mm_projector, vlm_uni_*) and of tower perturbations; mixed with `name`.
        name: checkpoint name (keeps MGM modules of different checkpoints different).
        hd: HD variant: image_grid 2, image_global true, image_size_aux 2x.
        fmt / shards: weight layout (see `save_state_dict`).
        towers: embedded tower weights: "same" as the folders (released case), "perturbed" (every tensor shifted
            by 0.05·N(0,1), so a test can tell which copy a loader used), "none" (no tower keys at all),
            "partial" (complete ConvNeXt, CLIP missing its last encoder layer and post_layernorm).
        tower_paths: "absolute" (paths of the tower folders) or "relative" (`model_zoo/OpenAI/<folder name>` as
            in released configs; resolves when the zoo folder is called `model_zoo` and the cwd is its parent).
        legacy_names: `mini_gemini*` model_type / `MiniGemini*ForCausalLM`.
        extra_keys: also store `...vision_model.embeddings.position_ids` [1, P+1] int64 (old transformers did).
        image_size_aux: HR side (default 64, HD 128).
        model_max_length: `tokenizer_model_max_length` and the tokenizer's `model_max_length`.
        dtype: cast every floating tensor ("bfloat16", "float16", ...) and write it as `torch_dtype`
            (released checkpoints are bfloat16); None keeps float32.

    Returns:
        A manifest entry: path, family, options, weight files, number of tensors.
    """
    from mgm.zoo.tokenizers import mgm_tokenizer_files

    if towers not in TOWER_MODES:
        raise ValueError(f"towers must be one of {TOWER_MODES}, got {towers!r}")
    if tower_paths not in TOWER_PATH_MODES:
        raise ValueError(f"tower_paths must be one of {TOWER_PATH_MODES}, got {tower_paths!r}")
    src = _Sources(Path(llm_dir), Path(clip_dir), Path(convnext_dir))
    out = _fresh_dir(out_dir)
    if image_size_aux is None:
        image_size_aux = src.convnext_cfg["image_size"] * (2 if hd else 1)
    if tower_paths == "absolute":
        vt, vt_aux, base = str(src.clip_dir.resolve()), str(src.convnext_dir.resolve()), str(src.llm_dir.resolve())
    else:
        vt, vt_aux = f"model_zoo/OpenAI/{src.clip_dir.name}", f"model_zoo/OpenAI/{src.convnext_dir.name}"
        base = f"model_zoo/LLM/{src.llm_dir.name}"

    llm_state = load_state_dict(src.llm_dir)
    clip, conv = tower_state(src.clip_dir, src.convnext_dir)
    if towers == "perturbed":
        clip = perturbed(clip, seeded_generator(seed, f"perturb-clip/{name}"))
        conv = perturbed(conv, seeded_generator(seed, f"perturb-convnext/{name}"))
    elif towers == "none":
        clip, conv = {}, {}
    elif towers == "partial":
        drop = (f".encoder.layers.{src.clip_cfg['num_hidden_layers'] - 1}.", ".post_layernorm.")
        clip = {k: v for k, v in clip.items() if not any(d in k for d in drop)}
    if extra_keys and clip:
        n = (src.clip_cfg["image_size"] // src.clip_cfg["patch_size"]) ** 2 + 1
        clip["model.vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(n).unsqueeze(0)
    projector, uni = src.mgm_modules(seed, name)
    # Module registration order of the original: LLM body, vision_tower, mm_projector, vision_tower_aux,
    # vlm_uni_* (added last), then lm_head (registered by the CausalLM after `model`).
    body = {k: v for k, v in llm_state.items() if not k.startswith("lm_head.")}
    head = {k: v for k, v in llm_state.items() if k.startswith("lm_head.")}
    state = {**body, **clip, **projector, **conv, **uni, **head}
    if dtype is not None:
        target = getattr(torch, dtype)
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    files = save_state_dict(state, out, fmt=fmt, shards=shards)

    config = mgm_config(spec, src.llm_cfg, clip_hidden=src.clip_hidden, aux_hidden=src.aux_hidden,
                        vision_tower=vt, vision_tower_aux=vt_aux, hd=hd, image_size_aux=image_size_aux,
                        model_max_length=model_max_length, legacy_names=legacy_names,
                        dtype=_dtype_name(state["model.embed_tokens.weight"].dtype), name_or_path=base)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(src.llm_dir / "generation_config.json", out / "generation_config.json")
    mgm_tokenizer_files(spec.tokenizer, src.llm_dir, out, model_max_length)
    return {
        "path": str(out.resolve()), "family": spec.family, "model_type": config["model_type"],
        "conv_mode": spec.conv_mode, "hd": hd, "format": fmt, "shards": shards,
        "weight_files": [p.name for p in files], "towers": towers, "tower_paths": tower_paths,
        "legacy_names": legacy_names, "extra_keys": extra_keys, "image_size_aux": image_size_aux,
        "dtype": config["torch_dtype"], "num_tensors": len(state),
    }


def write_stage1_adapter(out_dir: str | Path, *, spec: "LLMSpec", llm_dir: str | Path, clip_dir: str | Path,
                         convnext_dir: str | Path, seed: int, name: str, model_max_length: int = 512
                         ) -> dict[str, object]:
    """Write a stage-1 output folder: `mm_projector.bin` + `config.json` (docs/original.md#stage-1-adapter).

    `mm_projector.bin` is a `torch.save`d flat dict with full keys: `model.mm_projector.*`, `model.vlm_uni_*`,
    and both towers (`model.vision_tower.vision_tower.vision_model.*`, `model.vision_tower_aux.vision_st*`),
    since the original's key filter `vision_tower` also matches the frozen towers.

    Returns:
        A manifest entry (path, mm_projector file, family, number of tensors).
    """
    src = _Sources(Path(llm_dir), Path(clip_dir), Path(convnext_dir))
    out = _fresh_dir(out_dir)
    clip, conv = tower_state(src.clip_dir, src.convnext_dir)
    projector, uni = src.mgm_modules(seed, name)
    state = {k: v.contiguous().clone() for k, v in {**clip, **projector, **conv, **uni}.items()}
    torch.save(state, out / "mm_projector.bin")
    config = mgm_config(spec, src.llm_cfg, clip_hidden=src.clip_hidden, aux_hidden=src.aux_hidden,
                        vision_tower=str(src.clip_dir.resolve()), vision_tower_aux=str(src.convnext_dir.resolve()),
                        hd=False, image_size_aux=src.convnext_cfg["image_size"], model_max_length=model_max_length,
                        stage1=True, dtype=_dtype_name(state["model.mm_projector.0.weight"].dtype),
                        name_or_path=str(src.llm_dir.resolve()))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"path": str(out.resolve()), "family": spec.family,
            "mm_projector": str((out / "mm_projector.bin").resolve()), "num_tensors": len(state)}


class _Sources:
    """The folders an MGM checkpoint is made from, with the config values it needs."""

    def __init__(self, llm_dir: Path, clip_dir: Path, convnext_dir: Path) -> None:
        self.llm_dir, self.clip_dir, self.convnext_dir = llm_dir, clip_dir, convnext_dir
        self.llm_cfg: dict[str, object] = json.loads((llm_dir / "config.json").read_text())
        self.clip_cfg: dict[str, int] = json.loads((clip_dir / "config.json").read_text())["vision_config"]
        oc = json.loads((convnext_dir / "open_clip_config.json").read_text())
        self.convnext_cfg: dict[str, object] = oc["model_cfg"]["vision_cfg"]
        self.clip_hidden = int(self.clip_cfg["hidden_size"])
        self.aux_hidden = int(sum(self.convnext_cfg["dims"]))  # type: ignore[arg-type]

    def mgm_modules(self, seed: int, name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(mm_projector, vlm_uni_*) random weights of checkpoint `name`."""
        hidden = int(self.llm_cfg["hidden_size"])  # type: ignore[arg-type]
        extra = mgm_extra_state(seed, name, hidden, self.clip_hidden, self.aux_hidden)
        return ({k: v for k, v in extra.items() if ".mm_projector." in k},
                {k: v for k, v in extra.items() if ".vlm_uni_" in k})


def _fresh_dir(path: str | Path) -> Path:
    out = Path(path)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
