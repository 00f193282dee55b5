"""MMMU answer runner (the original `mgm/eval/MMMU/eval/run_llava.py`), on the shared batched engine.

Run from the repository root with the original flags:

    python mgm/eval/MMMU/eval/run_llava.py --data_path ./data/MGM-Eval/MMMU \
        --config_path mgm/eval/MMMU/eval/configs/llava1.5.yaml --model_path ./work_dirs/MGM/MGM-7B-HD \
        --answers-file ./work_dirs/MMMU/answers/MGM-7B-HD/merge.jsonl --split validation --conv-mode vicuna_v1 \
        [--num-chunks N --chunk-idx K] [--seed 42] [--load_8bit True]

Data (`--data_path`): a local folder with one sub-folder per subject (the 30 MMMU subjects, in the
original order), holding either the Hugging Face snapshot files `<split>-NNNNN-of-NNNNN.parquet`
(what `datasets.load_dataset("MMMU/MMMU", subject)` reads; `image_1` as `{bytes, path}`) or a local
`<split>.json` / `<split>.jsonl` list of samples whose `image_1` is a file path relative to the
subject folder. A non-local `--data_path` (a hub id) is read with `datasets.load_dataset` as the
original did. Missing subjects are reported and skipped.

Per sample, as the original (docs/original.md#evaluation): `process_single_sample`, then `construct_prompt` with the
YAML config (each config list holds one value); the model sees `<image>\\n<final_input_prompt>` and
the response is stripped of newlines; multiple-choice responses are parsed with
`parse_multi_choice_response`, open ones with `parse_open_response`. Records (JSONL):
`{id, question_type, answer, response, parsed_pred[, index2ans]}`.

Fixes of the original's bugs (docs/original.md#fixed-defects): shards split the SAMPLES (the original split the
subject list); samples without a usable image get the original's fallback answer (a random choice for
multiple choice — seeded per sample — or "INVALID GENERATION FOR MULTIPLE IMAGE INPUTS") instead of
crashing; models without an aux tower work; decoding is greedy by default (the original sampled with
5 beams at temperature 1: pass `--temperature 1 --num_beams 5` to reproduce that); the random
fallback of the response parser is seeded per sample, so answers do not depend on batching or resume.
Plus the shared engine's --batch-size, --device, --limit, --overwrite (see `mgm.eval.runner`).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a file: make the repository root importable without an install.
    sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from mgm.errors import UserError  # noqa: E402
from mgm.eval.runner import (AnswerFormat, EvalItem, EvalModel, RunResult, require_pandas,  # noqa: E402
                             run_benchmark, str2bool, entry_point)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MULTI_IMAGE_ANSWER = "INVALID GENERATION FOR MULTIPLE IMAGE INPUTS"

FORMAT = AnswerFormat(kind="mmmu", runner="MMMU run_llava.py",
                      required=("id", "question_type", "answer", "response", "parsed_pred"),
                      key_of=lambda r: (r["id"],), clean=lambda text: text.strip("\n"), model_field=None)


# ------------------------------------------------------------------------------------------ config
def resolve_config_path(path: str) -> Path:
    """`path` as given, else relative to this script's folder, else by name in configs/ (so the
    default `configs/llava1.5.yaml` works from any directory)."""
    candidate = Path(os.path.expanduser(path))
    for option in (candidate, Path(__file__).resolve().parent / path, CONFIG_DIR / candidate.name):
        if option.is_file():
            return option
    raise UserError(f"--config_path {path} not found (also looked in {CONFIG_DIR})")


def load_config(path: str) -> dict:
    """The YAML prompt config with every one-element list replaced by its value (as the original)."""
    import yaml

    file = resolve_config_path(path)
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"--config_path {file} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"--config_path {file}: expected a mapping of prompt settings")
    for key, value in list(config.items()):
        if key != "eval_params" and isinstance(value, list):
            if len(value) != 1:
                raise UserError(f"--config_path {file}: key {key} has {len(value)} values; expected exactly one")
            config[key] = value[0]
    for key in ("multi_choice_example_format", "short_ans_example_format"):
        if not isinstance(config.get(key), str):
            raise UserError(f"--config_path {file}: missing the prompt format {key!r}")
    config.setdefault("task_instructions", "")
    return config


# -------------------------------------------------------------------------------------------- data
def _subject_files(folder: Path, split: str) -> tuple[str, list[Path]]:
    parquet = sorted(folder.glob(f"{split}-*.parquet")) + [p for p in [folder / f"{split}.parquet"] if p.is_file()]
    if parquet:
        return "parquet", parquet
    for name, kind in ((f"{split}.json", "json"), (f"{split}.jsonl", "jsonl")):
        if (folder / name).is_file():
            return kind, [folder / name]
    return "", []


def _read_rows(kind: str, files: list[Path]) -> list[dict]:
    rows: list[dict] = []
    for file in files:
        if kind == "parquet":
            pd = require_pandas()
            try:
                frame = pd.read_parquet(file)
            except Exception as exc:  # pyarrow raises many types for a bad file
                raise UserError(f"MMMU data file {file} is not a readable parquet file: {exc}") from None
            rows.extend(frame.to_dict("records"))
        elif kind == "json":
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise UserError(f"MMMU data file {file} is not JSON (line {exc.lineno})") from None
            if not isinstance(data, list):
                raise UserError(f"MMMU data file {file}: expected a JSON list of samples")
            rows.extend(data)
        else:
            for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise UserError(f"MMMU data file {file}, line {lineno}: not JSON") from None
    return rows


def load_mmmu(data_path: str, split: str, subjects: Sequence[str]) -> list[tuple[str, Path | None, dict]]:
    """`(subject, subject folder, sample)` for every sample of `split`, subjects in the given order."""
    root = Path(os.path.expanduser(data_path))
    if not root.exists():
        if re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", data_path):  # looks like a hub id such as MMMU/MMMU
            return _load_from_hub(data_path, split, subjects)
        raise UserError(f"--data_path {data_path} does not exist")
    if not root.is_dir():
        raise UserError(f"--data_path {data_path} is not a folder")
    out: list[tuple[str, Path | None, dict]] = []
    missing = []
    for subject in subjects:
        folder = root / subject
        kind, files = _subject_files(folder, split)
        if not files:
            missing.append(subject)
            continue
        for row in _read_rows(kind, files):
            if not isinstance(row, dict):
                raise UserError(f"MMMU data of {subject} ({files[0]}): expected samples as objects")
            out.append((subject, folder, row))
    if not out:
        raise UserError(f"--data_path {data_path} has no MMMU data for split {split!r}: expected "
                        f"<subject>/{split}-*.parquet (Hugging Face snapshot) or <subject>/{split}.json "
                        f"for the subjects {', '.join(subjects[:4])}, ...")
    if missing:
        print(f"warning: --data_path {data_path}: no {split} data for {len(missing)} subject(s), skipped: "
              f"{', '.join(missing)}", file=sys.stderr)
    return out


def _load_from_hub(data_path: str, split: str, subjects: Sequence[str]) -> list[tuple[str, Path | None, dict]]:
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError(f"--data_path {data_path} is not a local folder, and reading it from the hub needs "
                        "`datasets`: pip install 'mgm[eval]'") from None
    out: list[tuple[str, Path | None, dict]] = []
    for subject in subjects:
        try:
            dataset = load_dataset(data_path, subject, split=split)
        except Exception as exc:  # network/hub errors of many kinds
            raise UserError(f"could not load MMMU subject {subject} from {data_path!r}: {exc}") from None
        out.extend((subject, None, dict(row)) for row in dataset)
    return out


def to_image(value: Any, folder: Path | None, where: str):
    """A PIL image from a sample's `image_1` value: PIL image, `{bytes, path}`, base64 text or file path."""
    from PIL import Image

    from mgm.data.image import open_image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        data = value.get("bytes")
        if data:
            if isinstance(data, str):
                data = base64.b64decode(data)
            return open_image(bytes(data), name=f"image_1 of {where}")
        value = value.get("path")
    if isinstance(value, str) and value:
        path = Path(value)
        if not path.is_absolute() and folder is not None:
            path = folder / path
        return open_image(path)
    raise UserError(f"image_1 of {where} is not an image (got {type(value).__name__})")


# ------------------------------------------------------------------------------------------- items
def mmmu_items(data_path: str, split: str, config: dict, seed: int,
               subjects: Sequence[str] | None = None) -> list[EvalItem]:
    from mgm.eval.mmmu_utils import (CAT_SHORT2LONG, construct_prompt, parse_multi_choice_response,
                                     parse_open_response, process_single_sample)

    subjects = list(subjects) if subjects else list(CAT_SHORT2LONG.values())
    items = []
    for subject, folder, row in load_mmmu(data_path, split, subjects):
        where = f"MMMU {subject} {split} sample {row.get('id')!r}"
        try:
            sample = construct_prompt(process_single_sample(row), config)
        except (KeyError, ValueError, IndexError, TypeError, AttributeError) as exc:
            raise UserError(f"{where}: cannot build the prompt ({type(exc).__name__}: {exc}); "
                            "is this MMMU data?") from None
        sample_id = sample["id"]
        multiple_choice = sample["question_type"] == "multiple-choice"

        def make(response: str, name: str, sample=sample, sample_id=sample_id, mc=multiple_choice) -> dict:
            if mc:
                rng = random.Random(f"{seed}:{sample_id}:parse")
                parsed = parse_multi_choice_response(response, sample["all_choices"], sample["index2ans"], rng=rng)
                return {"id": sample_id, "question_type": sample["question_type"], "answer": sample["answer"],
                        "response": response, "parsed_pred": parsed, "index2ans": sample["index2ans"]}
            return {"id": sample_id, "question_type": sample["question_type"], "answer": sample["answer"],
                    "response": response, "parsed_pred": parse_open_response(response)}

        fixed = None
        if not sample["image"]:
            # The original's path for samples without one usable image (several option images).
            fixed = (random.Random(f"{seed}:{sample_id}").choice(sample["all_choices"]) if multiple_choice
                     else MULTI_IMAGE_ANSWER)

        def load(value=sample["image"], folder=folder, where=where) -> list:
            return [to_image(value, folder, where)]

        items.append(EvalItem(key=(sample_id,), text=sample["final_input_prompt"], n_images=1, load_images=load,
                              make_record=make, where=where, fixed_answer=fixed))
    return items


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python mgm/eval/MMMU/eval/run_llava.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_path", default="configs/llava1.5.yaml", help="prompt config YAML")
    p.add_argument("--data_path", default="MMMU/MMMU", help="local MMMU folder (or a hub dataset id)")
    p.add_argument("--model_path", "--model-path", dest="model_path", default="liuhaotian/llava-v1.5-13b",
                   help="MGM checkpoint folder")
    p.add_argument("--model_base", "--model-base", dest="model_base", default=None)
    p.add_argument("--conv-mode", default="llava_v1", help="conversation template (default llava_v1)")
    p.add_argument("--num-chunks", type=int, default=1, help="number of shards (of the samples)")
    p.add_argument("--chunk-idx", type=int, default=0, help="which shard this process answers")
    p.add_argument("--answers-file", default="answer.jsonl", help="answers JSONL (resumed if it exists)")
    p.add_argument("--split", default="validation", help="validation, test or dev")
    p.add_argument("--seed", type=int, default=42, help="seed of sampling and of the random fallbacks")
    p.add_argument("--load_8bit", "--load-8bit", dest="load_8bit", type=str2bool, nargs="?", const=True,
                   default=False, help="quantise the LLM to 8 bit (True/False)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default; the original sampled at 1)")
    p.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=None)
    p.add_argument("--num_beams", "--num-beams", dest="num_beams", type=int, default=1,
                   help="beams (default 1; the original used 5)")
    p.add_argument("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=int, default=128)
    p.add_argument("--subjects", default=None, help="comma-separated subjects (default: all 30)")
    p.add_argument("--batch-size", type=int, default=None, help="questions per generate call (default: automatic)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--limit", type=int, default=None, help="answer at most N missing questions, then stop")
    p.add_argument("--overwrite", action="store_true", help="discard an existing --answers-file instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(argv: Sequence[str] | None = None, model: EvalModel | None = None) -> RunResult:
    """Run MMMU; `model` lets a caller reuse an already loaded model. Raises UserError on bad input."""
    args = build_parser().parse_args(argv)
    config = load_config(args.config_path)
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    if subjects:
        from mgm.eval.mmmu_utils import CAT_SHORT2LONG

        unknown = [s for s in subjects if s not in CAT_SHORT2LONG.values()]
        if unknown:
            raise UserError(f"--subjects: unknown subject(s) {', '.join(unknown)}; valid: "
                            f"{', '.join(CAT_SHORT2LONG.values())}")
    items = mmmu_items(args.data_path, args.split, config, args.seed, subjects)
    return run_benchmark(items, FORMAT, args, question_source=f"--data_path {args.data_path} (split {args.split})",
                         model=model)


main = entry_point(run)


if __name__ == "__main__":
    main()
