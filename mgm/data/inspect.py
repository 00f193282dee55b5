"""Show one training sample exactly as the model sees it: `python -m mgm.data.inspect`.

    python -m mgm.data.inspect --data-path data.json --model-path TOKENIZER_OR_CHECKPOINT --version v1 \
        [--index N] [--json]

Prints the rendered prompt, `input_ids` (-200 where an image goes), `labels` (-100 = not supervised), a
token table, the supervised text and the image tensor shapes. The tokenizer is set up exactly as training
sets it up for `--version` (pad-token rules, docs/original.md#training), and the sample goes through the same code as
in training (`mgm.data.dataset.SampleEncoder`). With a full MGM checkpoint as `--model-path` the images
are loaded and preprocessed with its settings; with a bare tokenizer folder only their placeholders are
tokenised. `--json` prints one JSON object (prompt, input_ids, labels, ...).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

from mgm.errors import UserError, exit_on_user_error
from mgm.program import program_name

DEFAULT_MAX_LENGTH = 2048  # the released scripts' --model_max_length


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name("python -m mgm.data.inspect"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", "--data_path", required=True, help="LLaVA conversation .json or .jsonl file")
    parser.add_argument("--model-path", required=True, help="MGM checkpoint folder or a bare tokenizer folder")
    parser.add_argument("--version", required=True, help="the training --version (plain, v1, llama_3, gemma, ...)")
    parser.add_argument("--index", type=int, default=0, help="sample index in the file (default 0; negative counts "
                                                               "from the end)")
    parser.add_argument("--image-folder", "--image_folder", default=None,
                        help="folder the image paths are relative to (default: the data file's folder)")
    parser.add_argument("--model-max-length", type=int, default=None,
                        help="truncation length (default: the checkpoint's tokenizer_model_max_length, else 2048)")
    parser.add_argument("--image-aspect-ratio", default=None, choices=["pad", "square"],
                        help="override the checkpoint's image_aspect_ratio")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    return parser


def _checkpoint_config(folder: Path) -> dict | None:
    """config.json of an MGM checkpoint (has mm_vision_tower), else None (a bare tokenizer folder)."""
    file = folder / "config.json"
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{file} is not valid JSON: {exc}") from None
    return config if config.get("mm_vision_tower") else None


def _image_processor(config: dict, folder: Path):
    """The CLIP processor of the checkpoint's LR tower (None when its folder cannot be found)."""
    from mgm.data.image import ImageProcessor
    from mgm.model.vision.registry import resolve_tower_path

    tower = resolve_tower_path(config["mm_vision_tower"], str(folder))
    if tower is None:
        return None
    if (tower / "preprocessor_config.json").is_file():
        processor = ImageProcessor.from_pretrained(tower)
    elif (tower / "config.json").is_file():
        size = json.loads((tower / "config.json").read_text())
        size = size.get("vision_config", size).get("image_size", 336)
        processor = ImageProcessor.for_image_size(int(size))
    else:
        return None
    processor.image_size_raw = dict(processor.crop_size)
    return processor


def load_for_inspection(model_path: str, version: str, data_path: str, image_folder: str | None,
                        max_length: int | None, aspect: str | None):
    """(tokenizer, DataConfig, notes) set up as training would for `version`."""
    from transformers import AutoTokenizer

    from mgm.data.dataset import DataConfig
    from mgm.data.tokenizer_setup import setup_tokenizer_for_version
    from mgm.model.settings import MGMSettings

    folder = Path(model_path)
    if not folder.is_dir():
        raise UserError(f"--model-path {model_path} is not a folder")
    config = _checkpoint_config(folder)
    if max_length is None:
        max_length = int((config or {}).get("tokenizer_model_max_length") or DEFAULT_MAX_LENGTH)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), model_max_length=max_length, padding_side="right")
    except (OSError, ValueError) as exc:
        raise UserError(f"--model-path {model_path}: no tokenizer could be loaded ({exc})") from None
    tokenizer, template, _ = setup_tokenizer_for_version(tokenizer, version)
    notes: list[str] = []
    processor = None
    settings = None
    if config is not None:
        settings = MGMSettings.from_config(SimpleNamespace(**config))
        processor = _image_processor(config, folder)
        if processor is None:
            notes.append(f"LR tower {config['mm_vision_tower']!r} not found: images not loaded")
    else:
        notes.append("bare tokenizer: images are not loaded, only their placeholders are tokenised")
    data_config = DataConfig(
        template_name=template, model_max_length=max_length, multimodal=True,
        image_folder=image_folder if image_folder is not None else str(Path(data_path).parent),
        image_processor=processor,
        image_aspect_ratio=aspect or (settings.image_aspect_ratio if settings else None) or "square",
        mm_use_im_start_end=settings.mm_use_im_start_end if settings else False,
        load_images=processor is not None, **DataConfig.image_fields(settings))
    return tokenizer, data_config, notes


def _token_text(tokenizer: Any, token_id: int) -> str:
    from mgm.constants import IMAGE_TOKEN_INDEX

    if token_id == IMAGE_TOKEN_INDEX:
        return "<image>"
    return tokenizer.convert_ids_to_tokens(int(token_id))


def inspect_sample(data_path: str, model_path: str, version: str, index: int = 0, image_folder: str | None = None,
                   max_length: int | None = None, aspect: str | None = None) -> dict:
    """The report of one sample as a dict (what `--json` prints)."""
    from mgm.constants import IGNORE_INDEX
    from mgm.data.dataset import SampleEncoder, SampleFile

    samples = SampleFile(data_path)
    if not -len(samples) <= index < len(samples):
        raise UserError(f"--index {index} is out of range: {data_path} has {len(samples)} samples")
    index %= len(samples)
    tokenizer, config, notes = load_for_inspection(model_path, version, data_path, image_folder, max_length, aspect)
    try:
        sample = samples[index]
    except ValueError as exc:
        raise UserError(f"sample index {index} of {data_path}: {exc}") from None
    encoded = SampleEncoder(tokenizer, config, data_path).encode(sample, index)
    ids = encoded.input_ids.tolist()
    labels = encoded.labels.tolist()
    supervised = [t for t in labels if t != IGNORE_INDEX]
    return {
        "index": index,
        "id": encoded.sample_id,
        "data_path": data_path,
        "version": version,
        "template": config.template_name,
        "tokenizer": type(tokenizer).__name__,
        "pad_token": tokenizer.pad_token,
        "pad_token_id": tokenizer.pad_token_id,
        "model_max_length": config.model_max_length,
        "prompt": encoded.prompt,
        "input_ids": ids,
        "labels": labels,
        "tokens": [_token_text(tokenizer, t) for t in ids],
        "num_tokens": len(ids),
        "num_supervised": len(supervised),
        "supervised_text": tokenizer.decode(supervised),
        "images": encoded.image_paths,
        "image_shapes": None if encoded.images is None else {
            "images": list(encoded.images.shape),
            "images_aux": None if encoded.images_aux is None else list(encoded.images_aux.shape)},
        "notes": notes,
    }


def format_report(report: dict) -> str:
    from mgm.constants import IGNORE_INDEX

    lines = [f"sample index {report['index']} (id {report['id']!r}) of {report['data_path']}",
             f"version {report['version']} -> template {report['template']}; tokenizer {report['tokenizer']}, "
             f"pad {report['pad_token']!r} ({report['pad_token_id']}); model_max_length {report['model_max_length']}"]
    if report["images"]:
        lines.append("images: " + ", ".join(report["images"]))
    if report["image_shapes"]:
        shapes = report["image_shapes"]
        lines.append(f"image tensors: images {shapes['images']}, images_aux {shapes['images_aux']}")
    lines += [f"note: {n}" for n in report["notes"]]
    lines += ["", "--- prompt ---", report["prompt"], "",
              f"--- tokens: {report['num_tokens']} ({report['num_supervised']} supervised, marked *) ---"]
    for pos, (tok_id, label, text) in enumerate(zip(report["input_ids"], report["labels"], report["tokens"])):
        mark = "*" if label != IGNORE_INDEX else " "
        lines.append(f"{pos:5d} {mark} {tok_id:>7d} {label:>7d}  {text!r}")
    lines += ["", "--- input_ids ---", json.dumps(report["input_ids"]), "", "--- labels ---",
              json.dumps(report["labels"]), "", "--- supervised text ---", repr(report["supervised_text"])]
    return "\n".join(lines)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = inspect_sample(args.data_path, args.model_path, args.version, args.index, args.image_folder,
                            args.model_max_length, args.image_aspect_ratio)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
