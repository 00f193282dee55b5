"""Build the tiny MGM model zoo: random towers, base LLMs and complete MGM checkpoints in the original layout.

Usage:
    python -m mgm.zoo.tiny --out DIR [--seed 0] [--families vicuna gemma ...] [--force]

Everything is generated from the seed in a few seconds on a CPU, offline, without importing `mgm.model`
(the checkpoints are an independent, literal rendering of the original on-disk format, docs/original.md#config-keys),
so tests can load them with the real loader and compare. A second run with the same seed and families
returns the existing `manifest.json` at once (`--force` rebuilds).

Tree written under DIR (families filter the LLM/ and MGM/ entries):

    DIR/
      manifest.json                         paths of every artifact + the options each checkpoint was built with
      README.md                             this text
      OpenAI/
        clip-vit-tiny-patch4-32/            HF CLIPModel (vision: hidden 32, 3 layers, 2 heads, MLP 64, 32 px, patch 4
          config.json                         -> 8x8 = 64 tokens; + 1-layer text tower), as openai/clip-vit-large-patch14-336
          model.safetensors                   keys vision_model.* / text_model.* / visual_projection / ...
          preprocessor_config.json            CLIPImageProcessor: shortest_edge 32 bicubic, crop 32, 1/255, CLIP mean/std
        openclip-convnext-tiny/             OpenCLIP ConvNeXt (depths 1/1/1/1, dims 8/16/32/64 -> 120 aux channels)
          open_clip_config.json               model_cfg (+ depths/dims), preprocess_cfg (CLIP mean/std), image_size 64
          open_clip_pytorch_model.bin         visual.trunk.{stem,stages}.* (timm names), visual.trunk.head.*,
                                              visual.head.*, text tower keys
      LLM/
        vicuna/ llama3/ gemma/ mistral/ mixtral/ yi/
          config.json generation_config.json model.safetensors   random *ForCausalLM, hidden 64, 2 layers, 4 heads
          tokenizer files                     vicuna: tokenizer.model; llama3: tokenizer.json; others: both
          tokenizer_config.json special_tokens_map.json
      MGM/
        MGM-Tiny-Vicuna/                    model-00001-of-00002.safetensors, model-00002-of-00002.safetensors,
                                            model.safetensors.index.json
        MGM-Tiny-Vicuna-HD/                 image_grid 2, image_global true, image_size_aux 128; model.safetensors
        MGM-Tiny-Vicuna-Bin/                pytorch_model-0000{1,2}-of-00002.bin + pytorch_model.bin.index.json,
                                            legacy model_type "mini_gemini" / MiniGeminiLlamaForCausalLM, extra
                                            ...embeddings.position_ids key
        MGM-Tiny-Vicuna-Perturbed/          embedded tower weights differ from the tower folders (+0.05·N(0,1))
        MGM-Tiny-Vicuna-Relative/           tower paths "model_zoo/OpenAI/<name>" as in released configs
        MGM-Tiny-Vicuna-Pretrain/           stage-1 output: mm_projector.bin (full keys, towers included) + config.json
        MGM-Tiny-LLaMA3/ MGM-Tiny-Gemma/ MGM-Tiny-Gemma-HD/ MGM-Tiny-Mistral/ MGM-Tiny-Mixtral/ MGM-Tiny-Yi/
                                            model.safetensors
        (every full checkpoint also has config.json, generation_config.json and the family's tokenizer files,
         with MGM's pad token: <unk> for Vicuna/Mistral/Mixtral/Yi, <|reserved_special_token_0|> for LLaMA-3)

Checkpoint facts (all families): mm_hidden_size 32, mm_hidden_size_aux 120, mm_projector_type mlp2x_gelu
(32 -> H -> H, H = 64), vlm_uni query 32->32, aux/val 120->32, image_size_aux 64 (HD 128) so each of the
8x8 LR tokens owns a 2x2 HR window of the 16x16 stage-0 map; tokenizer_model_max_length 512; tower paths
absolute unless stated. The LLM weights inside each checkpoint equal its LLM/<family> folder's weights, so
text-only logits of an MGM model must equal the plain HF model's.

Python: `build_tiny_zoo(out_dir, seed=0, families=None, force=False) -> dict` (the manifest).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from mgm.errors import UserError, exit_on_user_error
from mgm.program import program_name
from mgm.zoo.llms import LLM_FAMILIES, get_llm_spec

ZOO_FORMAT_VERSION = 1

# (checkpoint name, family, build options) — the default set; options are build_mgm_checkpoint's.
CHECKPOINTS: tuple[tuple[str, str, dict[str, object]], ...] = (
    ("MGM-Tiny-Vicuna", "vicuna", {"shards": 2}),
    ("MGM-Tiny-Vicuna-HD", "vicuna", {"hd": True}),
    ("MGM-Tiny-Vicuna-Bin", "vicuna", {"fmt": "bin", "shards": 2, "legacy_names": True, "extra_keys": True}),
    ("MGM-Tiny-Vicuna-Perturbed", "vicuna", {"towers": "perturbed"}),
    ("MGM-Tiny-Vicuna-Relative", "vicuna", {"tower_paths": "relative"}),
    ("MGM-Tiny-LLaMA3", "llama3", {}),
    ("MGM-Tiny-Gemma", "gemma", {}),
    ("MGM-Tiny-Gemma-HD", "gemma", {"hd": True}),
    ("MGM-Tiny-Mistral", "mistral", {}),
    ("MGM-Tiny-Mixtral", "mixtral", {}),
    ("MGM-Tiny-Yi", "yi", {}),
)
STAGE1_ADAPTERS: tuple[tuple[str, str], ...] = (("MGM-Tiny-Vicuna-Pretrain", "vicuna"),)


def build_tiny_zoo(out_dir: str | Path, seed: int = 0, families: Sequence[str] | None = None,
                   force: bool = False) -> dict[str, object]:
    """Build (or reuse) the tiny zoo under `out_dir` and return its manifest.

    Args:
        out_dir: root folder (created). Name it `model_zoo` if relative tower paths must resolve from its parent.
        seed: seed of every random choice (tokenizer corpora, weights).
        families: LLM families to build (default all: vicuna, llama3, gemma, mistral, mixtral, yi); the towers
            are always built, MGM checkpoints only for the chosen families.
        force: rebuild even if `out_dir/manifest.json` already matches.

    Returns:
        The manifest dict (also written to `out_dir/manifest.json`): `root`, `seed`, `families`, `towers`
        {clip, convnext}, `tokenizers` {kind: folder}, `llms` {family: folder}, `checkpoints` {name: entry},
        `stage1` {name: entry}; every path absolute.

    Raises:
        UserError: unknown family, or `out_dir` is a file or cannot be created.
    """
    from mgm.zoo.checkpoint import build_mgm_checkpoint, write_stage1_adapter
    from mgm.zoo.llms import build_llm
    from mgm.zoo.towers import CLIP_TOWER_NAME, CONVNEXT_TOWER_NAME, build_clip_tower, build_convnext_tower

    fams = _check_families(families)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root} exists and is not a folder")
    manifest_path = root / "manifest.json"
    if not force and manifest_path.exists():
        old = _read_manifest(manifest_path)
        if old is not None and _reusable(old, seed, fams):
            return old
    start = time.perf_counter()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {root}: {exc.strerror or exc}") from None
    manifest_path.unlink(missing_ok=True)  # a half-built zoo must never look complete
    with _quiet_transformers():
        clip_dir = _fresh(root / "OpenAI" / CLIP_TOWER_NAME)
        conv_dir = _fresh(root / "OpenAI" / CONVNEXT_TOWER_NAME)
        build_clip_tower(clip_dir, seed)
        build_convnext_tower(conv_dir, seed)
        llms: dict[str, str] = {}
        tokenizers: dict[str, str] = {}
        for fam in fams:
            path = build_llm(fam, _fresh(root / "LLM" / fam), seed)
            llms[fam] = str(path.resolve())
            tokenizers.setdefault(get_llm_spec(fam).tokenizer, llms[fam])
        checkpoints: dict[str, dict[str, object]] = {}
        for name, fam, options in CHECKPOINTS:
            if fam in fams:
                checkpoints[name] = build_mgm_checkpoint(
                    root / "MGM" / name, spec=get_llm_spec(fam), llm_dir=llms[fam], clip_dir=clip_dir,
                    convnext_dir=conv_dir, seed=seed, name=name, **options)  # type: ignore[arg-type]
        stage1: dict[str, dict[str, object]] = {}
        for name, fam in STAGE1_ADAPTERS:
            if fam in fams:
                stage1[name] = write_stage1_adapter(root / "MGM" / name, spec=get_llm_spec(fam), llm_dir=llms[fam],
                                                    clip_dir=clip_dir, convnext_dir=conv_dir, seed=seed, name=name)
    (root / "README.md").write_text(__doc__ or "")
    manifest: dict[str, object] = {
        "format_version": ZOO_FORMAT_VERSION,
        "seed": seed,
        "families": list(fams),
        "root": str(root.resolve()),
        "towers": {"clip": str(clip_dir.resolve()), "convnext": str(conv_dir.resolve())},
        "tokenizers": tokenizers,
        "llms": llms,
        "checkpoints": checkpoints,
        "stage1": stage1,
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _check_families(families: Sequence[str] | None) -> tuple[str, ...]:
    if families is None:
        return LLM_FAMILIES
    for fam in families:
        get_llm_spec(fam)  # UserError naming the valid families
    # Keep the table order so the same set always gives the same manifest.
    return tuple(f for f in LLM_FAMILIES if f in set(families))


def _read_manifest(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _reusable(manifest: dict[str, object], seed: int, families: tuple[str, ...]) -> bool:
    """True when the manifest was built by this format with the same seed/families and its folders exist."""
    if manifest.get("format_version") != ZOO_FORMAT_VERSION or manifest.get("seed") != seed:
        return False
    if tuple(manifest.get("families", ())) != families:
        return False
    paths = [*manifest["towers"].values(), *manifest["llms"].values(),  # type: ignore[union-attr]
             *(e["path"] for e in manifest["checkpoints"].values()),  # type: ignore[union-attr]
             *(e["path"] for e in manifest["stage1"].values())]  # type: ignore[union-attr]
    return all(Path(p).is_dir() for p in paths)


def _fresh(path: Path) -> Path:
    """Empty `path` (stale shards of an older build must not survive) and return it."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and info logs while building; restore them afterwards."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m mgm.zoo.tiny`."""
    parser = argparse.ArgumentParser(
        prog=program_name("python -m mgm.zoo.tiny"),
        description="Build the tiny MGM model zoo (random CLIP + ConvNeXt towers, tiny base LLMs with locally "
                    "trained tokenizers, and complete MGM checkpoints in the original on-disk layout) from a "
                    "seed, offline, in a few seconds. The tree is described in DIR/README.md.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="root folder to write (created); name it model_zoo for relative tower paths to resolve")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--families", nargs="+", default=None, metavar="FAMILY",
                        help=f"LLM families to build (default all): {' '.join(LLM_FAMILIES)}")
    parser.add_argument("--force", action="store_true", help="rebuild even if DIR/manifest.json already matches")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, build (or reuse), print where the manifest is."""
    args = build_parser().parse_args(argv)
    # save_pretrained imports DeepSpeed when it is installed (accelerate's unwrap check), and DeepSpeed then
    # warns that it fell back to the CPU accelerator on a machine without GPU. This process never uses
    # DeepSpeed, so name its accelerator and keep the output to the one line below.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    manifest = build_tiny_zoo(args.out, seed=args.seed, families=args.families, force=args.force)
    n_ckpt = len(manifest["checkpoints"]) + len(manifest["stage1"])  # type: ignore[arg-type]
    print(f"tiny zoo ready: {Path(manifest['root']) / 'manifest.json'} "  # type: ignore[arg-type]
          f"({len(manifest['llms'])} LLMs, {n_ckpt} MGM checkpoints)", file=sys.stdout)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
