"""Validate a whole training data file before a long run: `python -m mgm.data.check`.

    python -m mgm.data.check --data-path data.json --image-folder DIR [--model-path TOKENIZER --version V]

Checks every sample without loading a model: JSON shape (a list or JSONL of objects with a
`conversations` list of alternating human/gpt turns), `image` paths that exist and decode fully, at least
one non-empty reply. With `--model-path` (a tokenizer or checkpoint folder) and `--version`, each sample
is also rendered and masked exactly as in training: samples left with no supervised token are errors and
samples longer than `--model-max-length` (image tokens counted with `--image-tokens`) are warnings
(training truncates them). Shows a progress bar and ends with a summary; exit status 1 when any error was
found (also on warnings with `--strict`), else 0. `--json` prints the summary as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from mgm.errors import UserError, exit_on_user_error
from mgm.program import program_name

ERROR_KINDS = ("json", "format", "missing_image", "bad_image", "empty_target")
WARNING_KINDS = ("over_long",)


@dataclass
class Problem:
    """One finding: `kind` in ERROR_KINDS or WARNING_KINDS."""

    kind: str
    index: int
    sample_id: Any
    reason: str
    image: str | None = None

    @property
    def is_error(self) -> bool:
        return self.kind in ERROR_KINDS


@dataclass
class SampleInfo:
    """What one sample contributed to the summary."""

    index: int
    num_images: int
    num_tokens: int | None
    problems: list[Problem]


class Checker:
    """Checks samples of one file (picklable: it is sent to worker processes)."""

    def __init__(self, data_path: str, image_folder: str | None, tokenizer: Any = None, template: str | None = None,
                 max_length: int = 2048, image_tokens: int = 576) -> None:
        from mgm.data.dataset import SampleFile

        self.samples = SampleFile(data_path)
        self.data_path = data_path
        self.image_folder = image_folder
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.image_tokens = image_tokens
        self._encoder = None

    def _sample_encoder(self):
        from mgm.data.dataset import DataConfig, SampleEncoder

        if self._encoder is None:
            config = DataConfig(template_name=self.template, model_max_length=None, multimodal=True,
                                image_folder=self.image_folder, load_images=False)
            self._encoder = SampleEncoder(self.tokenizer, config, self.data_path)
        return self._encoder

    def check(self, index: int) -> SampleInfo:
        from mgm.data.dataset import BadSampleError, resolve_image_path
        from mgm.data.image import open_image

        try:
            sample = self.samples[index]
        except ValueError as exc:
            return SampleInfo(index, 0, None, [Problem("json", index, index, str(exc))])
        sample_id = sample.get("id", index)
        problems: list[Problem] = []
        fmt = _format_problem(sample)
        if fmt is not None:
            return SampleInfo(index, 0, None, [Problem(fmt[0], index, sample_id, fmt[1])])
        paths = _image_list(sample)
        for rel in paths:
            file = resolve_image_path(self.image_folder, rel)
            if not file.is_file():
                problems.append(Problem("missing_image", index, sample_id, f"image file {file} does not exist",
                                        str(file)))
                continue
            try:
                open_image(file)
            except UserError as exc:
                problems.append(Problem("bad_image", index, sample_id, str(exc), str(file)))
        num_tokens = None
        if self.tokenizer is not None:
            try:
                encoded = self._sample_encoder().encode(sample, index)
            except BadSampleError as exc:
                kind = "empty_target" if exc.bad.kind == "empty_target" else "format"
                problems.append(Problem(kind, index, sample_id, exc.bad.reason))
            else:
                num_tokens = len(encoded.input_ids) + len(paths) * (self.image_tokens - 1)
                if num_tokens > self.max_length:
                    text_only_cut = encoded.labels[: self.max_length]
                    if bool((text_only_cut == -100).all()):
                        problems.append(Problem("empty_target", index, sample_id,
                                                f"every supervised token lies beyond model_max_length="
                                                f"{self.max_length} ({len(encoded.input_ids)} text tokens)"))
                    else:
                        problems.append(Problem("over_long", index, sample_id,
                                                f"{num_tokens} tokens (images counted as {self.image_tokens} each) > "
                                                f"model_max_length={self.max_length}: training truncates it"))
        return SampleInfo(index, len(paths), num_tokens, problems)


def _image_list(sample: dict) -> list[str]:
    value = sample.get("image")
    if value is None or value == "" or value == []:
        return []
    return [value] if isinstance(value, str) else list(value)


def _format_problem(sample: dict) -> tuple[str, str] | None:
    """('format' | 'empty_target', reason) for a structurally bad sample, else None."""
    image = sample.get("image")
    if image not in (None, "", []) and not (isinstance(image, str) or (
            isinstance(image, list) and all(isinstance(v, str) and v for v in image))):
        return "format", f"'image' must be a path or a list of paths, got {image!r:.80}"
    turns = sample.get("conversations")
    if not isinstance(turns, list) or not turns:
        return "format", "'conversations' must be a non-empty list of turns"
    roles = []
    for i, turn in enumerate(turns):
        if (not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt")
                or not isinstance(turn.get("value"), str)):
            return "format", f"turn {i} must be {{'from': 'human'|'gpt', 'value': str}}, got {turn!r:.80}"
        roles.append(turn["from"])
    if roles[0] == "gpt":
        roles = roles[1:]
        turns = turns[1:]
    for j, role in enumerate(roles):
        if role != ("human" if j % 2 == 0 else "gpt"):
            return "format", f"turns must alternate human/gpt starting with human (turn {j} is {role!r})"
    if not any(t["from"] == "gpt" and t["value"].strip() for t in turns):
        return "empty_target", "no non-empty gpt reply: nothing to supervise"
    return None


# ---------------------------------------------------------------------------------------------------
# running over the file

_WORKER: Checker | None = None


def _init_worker(checker: Checker) -> None:
    global _WORKER  # one Checker per worker process (module state only inside workers)
    _WORKER = checker


def _run_one(index: int) -> SampleInfo:
    assert _WORKER is not None
    return _WORKER.check(index)


def iter_results(checker: Checker, workers: int) -> Iterator[SampleInfo]:
    indices = range(len(checker.samples))
    if workers <= 1:
        for i in indices:
            yield checker.check(i)
        return
    import multiprocessing as mp

    with mp.get_context("spawn" if sys.platform == "darwin" else "fork").Pool(
            workers, initializer=_init_worker, initargs=(checker,)) as pool:
        yield from pool.imap(_run_one, indices, chunksize=64)


def summarise(infos: Sequence[SampleInfo], max_length: int | None, tokenizer_checks: bool) -> dict:
    problems = sorted((p for info in infos for p in info.problems), key=lambda p: (not p.is_error, p.index))
    kinds = Counter(p.kind for p in problems)
    tokens = [i.num_tokens for i in infos if i.num_tokens is not None]
    return {
        "samples": len(infos),
        "image_samples": sum(1 for i in infos if i.num_images > 0),
        "text_only_samples": sum(1 for i in infos if i.num_images == 0),
        "multi_image_samples": sum(1 for i in infos if i.num_images > 1),
        "images": sum(i.num_images for i in infos),
        "bad_samples": len({p.index for p in problems if p.is_error}),
        "errors": {k: kinds[k] for k in ERROR_KINDS if kinds[k]},
        "warnings": {k: kinds[k] for k in WARNING_KINDS if kinds[k]},
        "max_tokens": max(tokens) if tokens else None,
        "model_max_length": max_length if tokenizer_checks else None,
        "tokenizer_checks": tokenizer_checks,
        "problems": [asdict(p) for p in problems],
    }


def format_summary(summary: dict, data_path: str, max_report: int) -> str:
    lines = [f"checked {summary['samples']} samples of {data_path}: {summary['image_samples']} with images "
             f"({summary['multi_image_samples']} with several), {summary['text_only_samples']} text-only, "
             f"{summary['images']} images"]
    if summary["tokenizer_checks"]:
        lines.append(f"longest sample: {summary['max_tokens']} tokens (model_max_length {summary['model_max_length']})")
    else:
        lines.append("masking and length not checked (pass --model-path and --version to check them)")
    errors = summary["errors"]
    warnings = summary["warnings"]
    lines.append("errors: " + (", ".join(f"{k} {v}" for k, v in errors.items()) or "none")
                 + f" ({summary['bad_samples']} bad samples)")
    lines.append("warnings: " + (", ".join(f"{k} {v}" for k, v in warnings.items()) or "none"))
    shown = summary["problems"][:max_report]
    for p in shown:
        level = "error" if p["kind"] in ERROR_KINDS else "warning"
        lines.append(f"  {level} [{p['kind']}] sample id={p['sample_id']!r} (index {p['index']}): {p['reason']}")
    if len(summary["problems"]) > len(shown):
        lines.append(f"  ... {len(summary['problems']) - len(shown)} more (use --max-report or --json)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name("python -m mgm.data.check"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", "--data_path", required=True, help="LLaVA conversation .json or .jsonl file")
    parser.add_argument("--image-folder", "--image_folder", default=None,
                        help="folder the image paths are relative to (default: the data file's folder)")
    parser.add_argument("--model-path", default=None, help="tokenizer or checkpoint folder: enables masking and "
                                                           "length checks (needs --version)")
    parser.add_argument("--version", default=None, help="the training --version (template + pad rules)")
    parser.add_argument("--model-max-length", type=int, default=2048, help="training --model_max_length (2048)")
    parser.add_argument("--image-tokens", type=int, default=576,
                        help="LLM tokens per image for the length check (576 base, 2880 HD)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes (default min(4, CPUs); 1 = in this process)")
    parser.add_argument("--max-report", type=int, default=20, help="problems listed in the report (default 20)")
    parser.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    parser.add_argument("--json", action="store_true", help="print the summary (with every problem) as JSON")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    tokenizer = template = None
    if args.model_path:
        if not args.version:
            raise UserError("--model-path needs --version (the tokenizer is set up as training sets it up)")
        from transformers import AutoTokenizer

        from mgm.data.tokenizer_setup import setup_tokenizer_for_version

        try:
            tokenizer = AutoTokenizer.from_pretrained(args.model_path, padding_side="right")
        except (OSError, ValueError) as exc:
            raise UserError(f"--model-path {args.model_path}: no tokenizer could be loaded ({exc})") from None
        tokenizer, template, _ = setup_tokenizer_for_version(tokenizer, args.version)
    image_folder = args.image_folder if args.image_folder is not None else str(Path(args.data_path).parent)
    if not Path(image_folder).is_dir():
        raise UserError(f"--image-folder {image_folder} is not a folder")
    checker = Checker(args.data_path, image_folder, tokenizer, template, args.model_max_length, args.image_tokens)
    infos = list(tqdm(iter_results(checker, args.workers), total=len(checker.samples), desc="checking",
                      unit="sample", file=sys.stderr, mininterval=0.5))
    summary = summarise(infos, args.model_max_length, tokenizer is not None)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(format_summary(summary, args.data_path, args.max_report))
    failed = bool(summary["errors"]) or (args.strict and bool(summary["warnings"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
