"""`mgm export`: a self-contained checkpoint folder that loads anywhere, and back to the original layout.

    mgm export SRC OUT                       # self-contained (default)
    mgm export OUT ORIG --layout original    # back to the layout SRC had
    python -m mgm.model.export ...           # the same

Self-contained layout: SRC's top-level files (weights, tokenizer, generation config: byte copies),
both tower folders copied to `towers/<name>/` with config.json pointing at them by relative path
(the loader resolves relative tower paths against the checkpoint folder), the processor
(`processor_config.json`, `chat_template.jinja` = the model's default template, `additional_chat_templates/`
= every MGM template), a model card `README.md` with provenance, and `mgm_export.json` recording what
was changed. Such a folder loads with `load_pretrained_model` and with `AutoProcessor` /
`AutoModelForImageTextToText` / `pipeline("image-text-to-text")` from any directory on any machine.

`--layout original` undoes it: the same weight bytes, config.json with the recorded tower paths
(same keys, values and order), the source's own files that the export had set aside; towers and
processor files are left out (`--towers-to DIR` copies the bundled towers somewhere, e.g. for
`MGM_TOWER_ROOT=DIR`, which finds them by folder name).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from mgm.program import program_name
from mgm.errors import UserError, exit_on_user_error

MANIFEST = "mgm_export.json"
CARD = "README.md"
TOWERS_DIR = "towers"
SET_ASIDE_DIR = "original_files"  # source files whose names the export writes itself
# transformers.utils' PROCESSOR_NAME, CHAT_TEMPLATE_FILE and CHAT_TEMPLATE_DIR, spelled out so that
# `--help` does not load transformers (tests/test_entry_point_help.py checks they still agree)
PROCESSOR_FILES = ("processor_config.json", "chat_template.jinja")
PROCESSOR_DIRS = ("additional_chat_templates",)
GENERATED = (MANIFEST, CARD, *PROCESSOR_FILES)
# config keys naming each tower: the current spelling first, then the one MGMSettings also reads
TOWER_KEYS = {"vision_tower": ("mm_vision_tower", "vision_tower"),
              "vision_tower_aux": ("mm_vision_tower_aux", "vision_tower_aux")}
FORMAT_VERSION = 1


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from None


def _write_json(file: Path, data: dict) -> None:
    # indent 2 in key order: what transformers and the tiny zoo write, so a restored config.json is byte-equal
    file.write_text(json.dumps(data, indent=2) + "\n")


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_source(src: Path) -> dict:
    """SRC's config.json after checking it is a full MGM checkpoint folder."""
    from mgm.model.checkpoint_files import CheckpointFiles
    from mgm.model.families import classes_for_model_type

    if not src.is_dir():
        raise UserError(f"{src} is not a folder")
    config = _read_json(src / "config.json") if (src / "config.json").is_file() else None
    if config is None:
        raise UserError(f"{src} has no config.json: not a checkpoint folder")
    classes_for_model_type(config.get("model_type"))
    if (src / "adapter_config.json").is_file():
        raise UserError(f"{src} is a LoRA adapter folder; merge it first (load_pretrained_model with model_base, "
                        "then save_pretrained) and export the merged folder")
    if not CheckpointFiles(src):
        raise UserError(f"{src} has no model weights (a projector-only folder needs its base LLM); "
                        "export a full checkpoint")
    return config


def _tower_root_rule(recorded: str) -> str:
    """How MGM_TOWER_ROOT is read, for a recorded tower path (a zoo root is the usual wrong guess)."""
    path = Path(recorded)
    holder = f".../{path.parent.name}" if path.parent.name else "..."
    return (f"MGM_TOWER_ROOT=DIR looks for DIR/{recorded} and DIR/{path.name}: set it to the folder that directly "
            f"holds {path.name!r} (e.g. {holder}), not to the model zoo's root above it.")


def _resolve_towers(src: Path, config: dict) -> dict[str, tuple[str, Path]]:
    """{tower: (recorded path, folder)} for the towers the config names, found as the model finds them."""
    from mgm.model.vision.registry import missing_tower_error, resolve_tower_path

    out = {}
    for tower, keys in TOWER_KEYS.items():
        key = next((k for k in keys if config.get(k)), None)
        if key is None:
            continue
        recorded = config[key]
        folder = resolve_tower_path(recorded, str(src))
        if folder is None:
            error = missing_tower_error("LR (CLIP)" if tower == "vision_tower" else "HR (ConvNeXt)", key, recorded,
                                        str(src), None)
            raise UserError(f"{error}\n{_tower_root_rule(recorded)}") from None
        out[tower] = (recorded, folder)
    return out


def _fresh_output(out: Path, src: Path, force: bool) -> Path:
    """A temporary folder beside `out` (renamed into place at the end, so a failed export leaves nothing)."""
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents:
        raise UserError(f"the output folder {out} is (or contains) the source folder {src}; choose another")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"{out} exists and is not empty; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def _finish(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)


def _copy_top_level(src: Path, dst: Path, skip: set[str]) -> list[str]:
    names = []
    for file in sorted(src.iterdir()):
        if file.is_file() and file.name not in skip:
            shutil.copy2(file, dst / file.name)
            names.append(file.name)
    return names


def export_self_contained(src: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write the self-contained folder of checkpoint `src` to `out`; returns `out`."""
    src, out = Path(src), Path(out)
    config = _check_source(src)
    if (src / MANIFEST).is_file():
        raise UserError(f"{src} is already a self-contained export ({MANIFEST}); copy it as it is, or export "
                        "--layout original first")
    towers = _resolve_towers(src, config)
    tmp = _fresh_output(out, src, force)
    try:
        copied = _copy_top_level(src, tmp, skip={"config.json", *GENERATED})
        set_aside = {}
        for name in GENERATED:
            if (src / name).is_file():
                (tmp / SET_ASIDE_DIR).mkdir(exist_ok=True)
                shutil.copy2(src / name, tmp / SET_ASIDE_DIR / name)
                set_aside[name] = f"{SET_ASIDE_DIR}/{name}"
        bundled = {}
        for tower, (recorded, folder) in towers.items():
            taken = {Path(b).name for b in bundled.values()}
            name = folder.name if folder.name not in taken else f"{folder.name}-{tower}"
            shutil.copytree(folder, tmp / TOWERS_DIR / name, symlinks=False)
            relative = f"{TOWERS_DIR}/{name}"
            bundled[tower] = relative
            for k in TOWER_KEYS[tower]:
                if config.get(k) == recorded:
                    config[k] = relative
        _write_json(tmp / "config.json", config)
        default_template = _write_processor(tmp)
        manifest = {
            "format": FORMAT_VERSION,
            "layout": "self-contained",
            "source": str(src.resolve()),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "mgm_version": _mgm_version(),
            "towers": {tower: {"config_keys": [k for k in TOWER_KEYS[tower] if config.get(k) == bundled[tower]],
                               "original_path": recorded, "source_folder": str(folder.resolve()),
                               "bundled": bundled[tower]}
                       for tower, (recorded, folder) in towers.items()},
            "set_aside": set_aside,
            "copied_files": {name: _sha256(tmp / name) for name in copied},
            "default_chat_template": default_template,
        }
        _write_json(tmp / MANIFEST, manifest)
        (tmp / CARD).write_text(model_card(config, manifest, out.name))
        _finish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_processor(folder: Path) -> str:
    """Save the processor files of `folder` into it (tokenizer files stay the source's bytes)."""
    from mgm.processing import MGMProcessor
    from mgm.processing.processor import drop_class_names

    processor = MGMProcessor.from_checkpoint(folder)
    with tempfile.TemporaryDirectory() as scratch:
        processor.save_pretrained(scratch)
        for name in PROCESSOR_FILES:
            shutil.copy2(Path(scratch) / name, folder / name)
        for name in PROCESSOR_DIRS:
            shutil.copytree(Path(scratch) / name, folder / name)
    drop_class_names(folder)
    return processor.profile.template


def export_original(src: str | Path, out: str | Path, force: bool = False, towers_to: str | Path | None = None) -> Path:
    """Write the original layout of self-contained export `src` to `out`; returns `out`."""
    src, out = Path(src), Path(out)
    if not (src / MANIFEST).is_file():
        raise UserError(f"{src} has no {MANIFEST}: it is not a self-contained export (already the original layout?)")
    manifest = _read_json(src / MANIFEST)
    if manifest.get("format") != FORMAT_VERSION:
        raise UserError(f"{src / MANIFEST} has format {manifest.get('format')!r}; this mgm reads {FORMAT_VERSION}")
    config = _check_source(src)
    tmp = _fresh_output(out, src, force)
    try:
        _copy_top_level(src, tmp, skip={"config.json", *GENERATED})
        for name, stored in manifest.get("set_aside", {}).items():
            shutil.copy2(src / stored, tmp / name)
        for entry in manifest.get("towers", {}).values():
            for key in entry["config_keys"]:
                config[key] = entry["original_path"]
            if towers_to is not None:
                target = Path(towers_to) / Path(entry["original_path"]).name
                if not target.exists():
                    shutil.copytree(src / entry["bundled"], target)
        _write_json(tmp / "config.json", config)
        _finish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _mgm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mgm")
    except PackageNotFoundError:
        return "unknown"


def model_card(config: dict, manifest: dict, name: str) -> str:
    """The README.md of an export: hub metadata, provenance, and how to load it."""
    towers = "\n".join(f"- {tower}: `{entry['bundled']}/` (recorded as `{entry['original_path']}`, copied from "
                       f"`{entry['source_folder']}`)" for tower, entry in manifest["towers"].items())
    files = "\n".join(f"- `{file}` sha256 `{digest}`" for file, digest in manifest["copied_files"].items())
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [mgm, mini-gemini, multimodal]
---
# {name}

An MGM (Mini-Gemini) checkpoint, `model_type: {config.get('model_type')}`, exported self-contained by
`mgm export` (mgm {manifest['mgm_version']}) on {manifest['exported_at']}.

## Provenance
- source folder: `{manifest['source']}`
- towers, bundled beside the weights:
{towers}
- files copied unchanged from the source:
{files}
- default chat template: `{manifest['default_chat_template']}` (every MGM template is in `additional_chat_templates/`)

`mgm export . ORIGINAL --layout original` writes the source layout back (same weights, same config).

## Use
```python
import mgm  # registers the MGM classes with transformers (on first use)
from transformers import pipeline

pipe = pipeline("image-text-to-text", model="{name}")
messages = [{{"role": "user", "content": [{{"type": "image", "url": "photo.jpg"}},
                                          {{"type": "text", "text": "Describe the image."}}]}}]
print(pipe(text=messages, max_new_tokens=64, do_sample=False)[0]["generated_text"][-1]["content"])
```
With mgm's own loader: `load_pretrained_model("{name}")`, or `mgm chat --model-path {name}`.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("python -m mgm.model.export"), description=__doc__.split("\n\n")[0],
        epilog="The self-contained folder can be moved, copied to another machine or pushed to the hub; "
               "its tower paths are relative to it.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="checkpoint folder (original layout), or an export with --layout original")
    parser.add_argument("output", help="folder to write (must be new or empty unless --force)")
    parser.add_argument("--layout", choices=("self-contained", "original"), default="self-contained",
                        help="self-contained (default): towers + processor bundled; original: undo an export")
    parser.add_argument("--towers-to", metavar="DIR", default=None,
                        help="with --layout original: also copy the bundled towers to DIR/<tower folder name>")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.layout == "original":
        out = export_original(args.source, args.output, force=args.force, towers_to=args.towers_to)
    else:
        if args.towers_to is not None:
            raise UserError("--towers-to goes with --layout original")
        out = export_self_contained(args.source, args.output, force=args.force)
    print(f"wrote {args.layout} checkpoint folder {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
