"""The shared answer runner behind every `python -m mgm.eval.model_*` module (docs/original.md#evaluation).

Each benchmark module turns its question file into a list of `EvalItem`s (question text, lazy image
loader, how to build the output record) and hands them to `run_benchmark`, which:

* loads the model ONCE (`EvalModel.load`) and generates in batches (`--batch-size`; by default chosen
  from the model size and, on CUDA, the free memory), with the questions sorted by prompt length so a
  batch pads little; batched greedy answers equal one-at-a-time answers;
* shards with `--num-chunks/--chunk-idx` exactly as the original (`get_chunk`: the k-th slice of size
  ceil(len/n)), but a chunk index past the last slice gives an empty shard instead of an IndexError;
* RESUMES: records already in `--answers-file` are kept and only the missing questions are answered;
  each batch is appended and flushed, so a kill loses at most one batch (a half-written last line is
  dropped on the next run); when the shard is complete the file is rewritten in question-file order,
  which order-sensitive scorers (MME pairs, POPE) rely on;
* refuses, with a message naming the file and line, an answers file that holds another runner's
  records, answers to questions that are not in the question file (another benchmark), answers of
  another shard, or answers of another model (`--overwrite` starts afresh instead);
* keeps going when one question fails (missing or corrupt image, prompt too long): the other answers
  are written, every failure is listed with its question-file line, and the run exits with status 2;
  re-running answers only what is missing.

Output records have exactly the original fields, so the original scorers read them unchanged.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from mgm.errors import UserError, exit_on_user_error
from mgm.eval.answers import AnswerFormat, EvalItem, RunResult, guess_record_kind, load_answers, reorder_answers
from mgm.eval.questions import VQA_FORMAT, read_question_jsonl, require_pandas, vqa_items
from mgm.eval.runner_args import add_common_args, get_chunk, split_list, str2bool

__all__ = [
    "VQA_FORMAT", "AnswerFormat", "EvalItem", "EvalModel", "RunResult", "add_common_args", "build_prompt",
    "default_batch_size", "entry_point", "get_chunk", "guess_record_kind", "load_answers", "read_question_jsonl",
    "require_pandas", "resolve_conv_mode", "run_benchmark", "runner_cli", "split_list", "str2bool", "vqa_items",
]


# ---------------------------------------------------------------------------------------- model
class EvalModel:
    """A model shared by every batch (and, in tests or `mgm eval`, by several runners).

    Loaded lazily: `EvalModel.load(args)` only records how to load; the checkpoint is read on the
    first access to `engine`, so a run with nothing left to answer never loads it.
    """

    def __init__(self, name: str, engine: Any = None, loader: Callable[[], Any] | None = None) -> None:
        self.name = name
        self._engine = engine
        self._loader = loader

    @property
    def engine(self) -> Any:
        if self._engine is None:
            if self._loader is None:
                raise RuntimeError("EvalModel has neither an engine nor a loader")
            self._engine = self._loader()
        return self._engine

    @classmethod
    def load(cls, args: argparse.Namespace) -> "EvalModel":
        """A lazily loaded model from `args.model_path` (+ model_base, load_8bit, device)."""
        from mgm.model_name import get_model_name_from_path

        model_path = os.path.expanduser(args.model_path)
        name = get_model_name_from_path(model_path)

        def loader() -> Any:
            from mgm.inference.engine import InferenceEngine
            from mgm.model.builder import load_pretrained_model
            from mgm.profile import profile_of

            tokenizer, model, image_processor, context_len = load_pretrained_model(
                model_path, getattr(args, "model_base", None), name, load_8bit=bool(getattr(args, "load_8bit", False)),
                device=getattr(args, "device", "auto"))
            # the template's stop tokens end answers (the original runners' `terminators`, for every template)
            profile = profile_of(model).with_template(getattr(args, "conv_mode", None) or None)
            return InferenceEngine(tokenizer, model, image_processor, context_len, profile=profile)

        return cls(name, loader=loader)


def default_batch_size(engine: Any, max_new_tokens: int, num_beams: int = 1) -> int:
    """A batch size that fits: 16 for tiny models on CPU, 4 for small, 1 for big; on CUDA from free memory.

    The CUDA estimate budgets per question the KV cache of (image tokens + 256 prompt tokens +
    max_new_tokens) for every beam, three times over for activations, plus the HR tower's working set.
    """
    import torch

    model = engine.model
    device = engine.device
    if device.type == "cuda":
        cfg = model.config
        layers = getattr(cfg, "num_hidden_layers", 32)
        heads = getattr(cfg, "num_attention_heads", 32)
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        tokens = engine.num_image_tokens() + 256 + max_new_tokens
        itemsize = torch.finfo(engine.dtype).bits // 8
        kv = 2 * layers * kv_heads * head_dim * tokens * itemsize * max(1, num_beams)
        side = getattr(model.mgm_settings, "image_size_aux", 768) or 768
        tower = int(256 * 2**20 * (side / 768) ** 2)
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, min(32, int(0.6 * free / (3 * kv + tower))))
    n_params = sum(p.numel() for p in model.parameters())
    if n_params < 100_000_000:
        return 16
    if n_params < 1_000_000_000:
        return 4
    return 1


def resolve_conv_mode(conv_mode: str, model_name: str, keyed_on: str = "conv") -> str:
    """The original's `plain` → `<mode>_mmtag` auto-switch, kept only when that template exists.

    The original appended `_mmtag` when `plain` was in the conv mode (or, for MMBench, in the model
    name), no "finetune" was in the model name and `mmtag` was not already in the conv mode — naming
    templates that do not exist (e.g. `plain_mmtag`, docs/original.md#fixed-defects). Here the switch happens only
    when the target template exists; otherwise the requested template is used as is.
    """
    from mgm.conversation import conv_templates, get_template

    get_template(conv_mode)  # unknown name -> UserError listing the valid ones
    trigger = ("plain" in conv_mode) if keyed_on == "conv" else ("plain" in model_name)
    if trigger and "finetune" not in model_name.lower() and "mmtag" not in conv_mode:
        target = conv_mode + "_mmtag"
        if target in conv_templates:
            print(f"It seems that this is a plain model, but it is not using a mmtag prompt, "
                  f"auto switching to {target}.")
            return target
        print(f"note: plain model without an mmtag prompt; the original would switch to {target}, which is not "
              f"a template; using {conv_mode}", file=sys.stderr)
    return conv_mode


def build_prompt(conv_mode: str, user_text: str) -> str:
    """One user turn + an open assistant turn in template `conv_mode` (the text as given)."""
    from mgm.conversation import get_template

    conv = get_template(conv_mode)
    conv.append_message(conv.roles[0], user_text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


# ------------------------------------------------------------------------------------------- run
def _pending(items: list[EvalItem], done: Counter) -> list[EvalItem]:
    left = Counter(done)
    pending = []
    for item in items:
        if left[item.key] > 0:
            left[item.key] -= 1
        else:
            pending.append(item)
    return pending


def _batches(items: list[EvalItem], batch_size: int) -> list[list[EvalItem]]:
    """Consecutive groups of at most `batch_size` items with the same number of images."""
    out: list[list[EvalItem]] = []
    for item in items:
        if out and len(out[-1]) < batch_size and out[-1][0].n_images == item.n_images:
            out[-1].append(item)
        else:
            out.append([item])
    return out


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class _Generator:
    """Turns a batch of items into cleaned answer texts with one batched `generate` call."""

    def __init__(self, model: EvalModel, conv_mode: str, params: Any, fmt: AnswerFormat) -> None:
        self.model = model
        self.conv_mode = conv_mode
        self.params = params
        self.fmt = fmt

    def prompt(self, item: EvalItem) -> str:
        """The question with its images placed and templated as the model's profile says."""
        return self.model.engine.profile.with_template(self.conv_mode).prompt(item.text, item.n_images)

    def __call__(self, batch: list[EvalItem], images: list[list]) -> list[str]:
        from mgm.inference.requests import Request

        engine = self.model.engine
        model = engine.model
        if hasattr(model, "update_prompt"):  # the original's hook (no MGM model defines it)
            model.update_prompt([[item.text] for item in batch])
        requests = [Request(self.prompt(item), imgs, self.params) for item, imgs in zip(batch, images)]
        out = engine.generate_ids(requests)
        return [self.fmt.clean(engine.profile.decode(row)) for row in out]


def run_benchmark(items: list[EvalItem], fmt: AnswerFormat, args: argparse.Namespace, *,
                  question_source: str, model: EvalModel | None = None, conv_switch: str = "conv") -> RunResult:
    """Answer the questions of this shard that are missing from `args.answers_file` (module docstring)."""
    from mgm.conversation import get_template

    get_template(args.conv_mode)  # an unknown template fails before the model loads
    all_keys = Counter(item.key for item in items)
    chunk = get_chunk(items, args.num_chunks, args.chunk_idx)
    chunk_keys = Counter(item.key for item in chunk)
    answers_file = os.path.expanduser(args.answers_file)
    if model is None:
        model = EvalModel.load(args)  # lazy: nothing is loaded unless a question is left to answer
    model_name = model.name
    if args.overwrite and os.path.exists(answers_file):
        os.unlink(answers_file)
    records = load_answers(answers_file, fmt, all_keys, chunk_keys, model_name, question_source)
    result = RunResult(answers_file, total=len(chunk), resumed=len(records))
    pending = _pending(chunk, Counter(fmt.key_of(r) for r in records))
    limited = args.limit is not None and args.limit < len(pending)
    if args.limit is not None:
        pending = sorted(pending, key=lambda it: (it.n_images, -len(it.text)))[: max(0, args.limit)]
    os.makedirs(os.path.dirname(os.path.abspath(answers_file)), exist_ok=True)
    if not os.path.exists(answers_file):
        open(answers_file, "w").close()  # an empty shard still leaves its (empty) file for the merge step

    if pending:
        written = _answer(pending, fmt, args, model, answers_file, result, conv_switch)
        records.extend(written)
    result.complete = not result.failed and not limited
    if result.complete:
        dropped = reorder_answers(answers_file, records, chunk, fmt)
        if dropped:
            print(f"note: dropped {dropped} duplicate answer(s) from {answers_file}", file=sys.stderr)
    print(f"{fmt.runner}: {result.written} answered, {result.resumed} kept from {answers_file}, "
          f"{len(result.failed)} failed, {result.total} questions in this shard", file=sys.stderr)
    if result.failed:
        for message in result.failed[:20]:
            print(f"error: {message}", file=sys.stderr)
        more = " (first 20 listed)" if len(result.failed) > 20 else ""
        raise UserError(f"{len(result.failed)} question(s) failed{more}; the other answers are in {answers_file}. "
                        "Fix the inputs and run the same command again to answer only the missing ones")
    return result


def _answer(pending: list[EvalItem], fmt: AnswerFormat, args: argparse.Namespace, model: EvalModel,
            answers_file: str, result: RunResult, conv_switch: str) -> list[dict]:
    """Generate answers for `pending` in batches, appending each batch to the answers file."""
    from tqdm import tqdm

    written: list[dict] = []
    fixed = [it for it in pending if it.fixed_answer is not None]
    to_run = [it for it in pending if it.fixed_answer is None]
    with open(answers_file, "a", encoding="utf-8") as out:
        def emit(pairs: list[tuple[EvalItem, str]]) -> None:
            recs = [item.make_record(text, model.name) for item, text in pairs]
            out.write("".join(json.dumps(r) + "\n" for r in recs))
            out.flush()  # in the OS's hands now: a killed run keeps every finished batch
            written.extend(recs)
            result.written += len(recs)

        if fixed:
            emit([(it, it.fixed_answer) for it in fixed])
        if not to_run:
            return written
        if args.seed is not None:
            import torch

            torch.manual_seed(args.seed)
        conv_mode = resolve_conv_mode(args.conv_mode, model.name, conv_switch)
        from mgm.inference.requests import GenerationParams

        params = GenerationParams(temperature=args.temperature, top_p=args.top_p,
                                  max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
        batch_size = args.batch_size or default_batch_size(model.engine, args.max_new_tokens, args.num_beams)
        if batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {batch_size}")
        generate = _Generator(model, conv_mode, params, fmt)
        # Longest prompts first: similar lengths share a batch, and an out-of-memory shows up at once.
        ordered = sorted(to_run, key=lambda it: (it.n_images, -len(it.text)))
        bar = tqdm(total=len(ordered), unit="item", desc=fmt.runner, file=sys.stderr, dynamic_ncols=True,
                   disable=args.no_progress)
        queue = _batches(ordered, batch_size)
        while queue:
            batch = queue.pop(0)
            ready, images = [], []
            for item in batch:
                try:
                    images.append(item.load_images() if item.n_images else [])
                    ready.append(item)
                except UserError as exc:
                    result.failed.append(f"{item.where}: {exc}")
                    bar.update(1)
            if not ready:
                continue
            try:
                texts = generate(ready, images)
            except UserError as exc:
                if len(ready) == 1:
                    result.failed.append(f"{ready[0].where}: {exc}")
                    bar.update(1)
                    continue
                queue[:0] = [[it] for it in ready]  # find the failing question one by one
                continue
            except RuntimeError as exc:
                if not _is_oom(exc) or len(ready) == 1:
                    raise
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                half = max(1, len(ready) // 2)
                print(f"note: out of memory at batch size {len(ready)}; retrying with {half}", file=sys.stderr)
                queue[:0] = [ready[:half], ready[half:]]
                continue
            emit(list(zip(ready, texts)))
            bar.update(len(ready))
        bar.close()
    return written


def entry_point(run: Callable[..., "RunResult"]) -> Callable[..., "RunResult"]:
    """A runner module's `main(argv=None, model=None)`: its `run`, with bad input reported as one line on
    stderr (exit status 2) instead of a traceback."""
    @exit_on_user_error
    def main(argv: Sequence[str] | None = None, model: "EvalModel | None" = None) -> "RunResult":
        return run(argv, model)

    main.__doc__ = f"CLI entry of {run.__module__}: `run` with bad input reported as one line on stderr."
    return main


def runner_cli(prog: str, doc: str | None, fmt: AnswerFormat, items: Callable[[argparse.Namespace], list[EvalItem]],
               *, conv_mode: str, max_new_tokens: int, question_file: str = "tables/question.jsonl",
               add_args: Callable[[argparse.ArgumentParser], None] | None = None,
               conv_switch: str = "conv") -> tuple[Callable[[], argparse.ArgumentParser], Callable[..., RunResult],
                                                   Callable[..., RunResult]]:
    """`(build_parser, run, main)` of a runner module reading `--question-file`.

    The parser has the common flags (with this runner's defaults) plus `add_args(parser)`'s;
    `run(argv=None, model=None)` answers `items(args)` (a caller may pass an already loaded model);
    `main` is `run` with bad input reported as one line on stderr.
    """
    def build_parser() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_common_args(parser, conv_mode=conv_mode, max_new_tokens=max_new_tokens, question_file=question_file)
        if add_args is not None:
            add_args(parser)
        return parser

    def run(argv: Sequence[str] | None = None, model: EvalModel | None = None) -> RunResult:
        """Run the benchmark; `model` lets a caller reuse an already loaded model. Raises UserError on bad input."""
        args = build_parser().parse_args(argv)
        return run_benchmark(items(args), fmt, args, question_source=f"--question-file {args.question_file}",
                             model=model, conv_switch=conv_switch)

    return build_parser, run, entry_point(run)
