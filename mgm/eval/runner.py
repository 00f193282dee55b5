"""The shared answer runner behind every `python -m mgm.eval.model_*` module (MGM_SPEC §6.1).

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
import math
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mgm.errors import UserError, exit_on_user_error

# How a foreign record is described in messages, keyed by `guess_record_kind`.
_KIND_NAMES = {
    "vqa": "a VQA-style answer {question_id, prompt, text, ...} (model_vqa_loader / model_vqa / model_vqa_science)",
    "mmbench": "an MMBench answer {question_id, round_id, options, option_char, ...} (model_vqa_mmbench)",
    "mathvista": "a MathVista answer {pid, query, response, ...} (model_math_vista)",
    "mmmu": "an MMMU answer {id, question_type, response, parsed_pred, ...} (MMMU run_llava.py)",
}


# ------------------------------------------------------------------------------------------ chunking
def split_list(lst: Sequence, n: int) -> list:
    """Split `lst` into slices of size ceil(len/n) (the original's rule; may give fewer than n slices)."""
    chunk_size = max(1, math.ceil(len(lst) / n))
    return [lst[i:i + chunk_size] for i in range(0, len(lst), chunk_size)]


def get_chunk(lst: Sequence, n: int, k: int) -> list:
    """The k-th of `n` shards of `lst`; empty when that slice does not exist (the original raised IndexError)."""
    if n < 1:
        raise UserError(f"--num-chunks must be >= 1, got {n}")
    if not 0 <= k < n:
        raise UserError(f"--chunk-idx must be in 0..{n - 1} for --num-chunks {n}, got {k}")
    chunks = split_list(lst, n)
    return list(chunks[k]) if k < len(chunks) else []


def require_pandas():
    """pandas (the `eval` extra), or a UserError saying how to install it."""
    try:
        import pandas
    except ImportError:
        raise UserError("reading MMBench TSV / MMMU parquet files needs pandas (and pyarrow): "
                        "pip install 'mgm[eval]'") from None
    return pandas


# ------------------------------------------------------------------------------------------- flags
def str2bool(value: str | bool) -> bool:
    """Parse a boolean flag value; the original's `type=bool` took any non-empty string (even "False") as True."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "t", "yes", "y", "on"):
        return True
    if text in ("0", "false", "f", "no", "n", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {value!r}")


def add_common_args(parser: argparse.ArgumentParser, *, conv_mode: str, temperature: float = 0.2,
                    max_new_tokens: int = 1024, question_file: str = "tables/question.jsonl",
                    model_flag: str = "--model-path") -> None:
    """The original runners' flags (same names and defaults) plus the shared engine's own options."""
    parser.add_argument(model_flag, *(["--model-path"] if model_flag != "--model-path" else []),
                        dest="model_path", default="facebook/opt-350m", help="MGM checkpoint folder")
    parser.add_argument("--model-base", "--model_base", dest="model_base", default=None,
                        help="base LLM for projector-only or LoRA checkpoint folders")
    parser.add_argument("--image-folder", default="", help="folder the question file's image paths are relative to")
    parser.add_argument("--question-file", default=question_file, help="benchmark question file")
    parser.add_argument("--answers-file", default="answer.jsonl",
                        help="answers JSONL; answers already in it are kept and only missing questions are run")
    parser.add_argument("--conv-mode", default=conv_mode, help=f"conversation template (default {conv_mode})")
    parser.add_argument("--num-chunks", type=int, default=1, help="number of shards the questions are split into")
    parser.add_argument("--chunk-idx", type=int, default=0, help="which shard (0-based) this process answers")
    parser.add_argument("--temperature", type=float, default=temperature,
                        help=f"sampling temperature; 0 = greedy (default {temperature})")
    parser.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=None)
    parser.add_argument("--num_beams", "--num-beams", dest="num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=int,
                        default=max_new_tokens, help=f"answer length limit in tokens (default {max_new_tokens})")
    parser.add_argument("--load_8bit", "--load-8bit", dest="load_8bit", type=str2bool, nargs="?", const=True,
                        default=False, help="quantise the LLM to 8 bit (True/False)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="questions per generate call (default: from the model size and free memory)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=int, default=None, help="random seed (matters only when sampling)")
    parser.add_argument("--limit", type=int, default=None,
                        help="answer at most N missing questions, then stop (smoke tests)")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard an existing --answers-file instead of resuming it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# -------------------------------------------------------------------------------------- data model
@dataclass
class EvalItem:
    """One question to answer.

    `key` identifies the question for resume (it must equal `AnswerFormat.key_of(record)` of its
    record); `text` is the user turn WITHOUT image tags (the runner adds one per image);
    `load_images()` returns the PIL images (raising UserError naming the file); `make_record(answer,
    model_name)` builds the output record; `where` locates the question for messages;
    `fixed_answer`, when set, is written without running the model (MMMU multi-image samples).
    """

    key: Hashable
    text: str
    n_images: int
    load_images: Callable[[], list]
    make_record: Callable[[str, str], dict]
    where: str
    fixed_answer: str | None = None


@dataclass(frozen=True)
class AnswerFormat:
    """What one runner writes: its record kind, required keys and the resume key of a record."""

    kind: str
    runner: str
    required: tuple[str, ...]
    key_of: Callable[[dict], Hashable]
    clean: Callable[[str], str] = str.strip
    model_field: str | None = "model_id"


def guess_record_kind(record: dict) -> str | None:
    """Which runner wrote `record` (by its distinctive keys), or None."""
    if "round_id" in record and "option_char" in record:
        return "mmbench"
    if "parsed_pred" in record:
        return "mmmu"
    if "pid" in record and "response" in record:
        return "mathvista"
    if "question_id" in record and "text" in record:
        return "vqa"
    return None


@dataclass
class RunResult:
    """Outcome of one `run_benchmark` call."""

    answers_file: str
    total: int
    resumed: int = 0
    written: int = 0
    failed: list[str] = field(default_factory=list)
    complete: bool = False


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
        from mgm.mm_utils import get_model_name_from_path

        model_path = os.path.expanduser(args.model_path)
        name = get_model_name_from_path(model_path)

        def loader() -> Any:
            from mgm.model.builder import load_pretrained_model
            from mgm.inference.engine import InferenceEngine

            tokenizer, model, image_processor, context_len = load_pretrained_model(
                model_path, getattr(args, "model_base", None), name, load_8bit=bool(getattr(args, "load_8bit", False)),
                device=getattr(args, "device", "auto"))
            return InferenceEngine(tokenizer, model, image_processor, context_len,
                                   extra_eos_tokens=eval_eos_tokens(getattr(args, "conv_mode", "") or ""))

        return cls(name, loader=loader)

    def image_prefix(self) -> str:
        """The text put before the question for each image (`<image>\\n`, or with start/end tags)."""
        from mgm.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN

        if getattr(self.engine.model.config, "mm_use_im_start_end", False):
            return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN + "\n"
        return DEFAULT_IMAGE_TOKEN + "\n"



def eval_eos_tokens(conv_mode: str) -> tuple[str, ...]:
    """Tokens that end an answer besides the model's own EOS ids: `<|eot_id|>` for llama_3 templates
    (the original runners' `terminators`)."""
    return ("<|eot_id|>",) if "llama_3" in conv_mode else ()


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
    templates that do not exist (e.g. `plain_mmtag`, MGM_SPEC §10.27). Here the switch happens only
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
    """One user turn + an open assistant turn in template `conv_mode`."""
    from mgm.conversation import get_template

    conv = get_template(conv_mode)
    conv.append_message(conv.roles[0], user_text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


# --------------------------------------------------------------------------------- answers file
def _describe_key(key: Hashable) -> str:
    return repr(key[0] if isinstance(key, tuple) and len(key) == 1 else key)


def load_answers(path: str, fmt: AnswerFormat, all_keys: Counter, chunk_keys: Counter, model_name: str | None,
                 question_source: str) -> list[dict]:
    """Read and check an existing answers file; a half-written last line (killed run) is dropped.

    Raises UserError (naming the file and line) for a record of another runner, an answer to a
    question not in the question file, an answer of another shard, or one of another model.
    """
    if not os.path.exists(path):
        return []
    if os.path.isdir(path):
        raise UserError(f"--answers-file {path} is a directory")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise UserError(f"answers file {path} is not UTF-8 text; is it an answers file?") from None
    lines = text.split("\n")
    records: list[dict] = []
    repaired = None
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"answers file {path}, line {index + 1}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if index == len(lines) - 1:  # no newline after it: the run was killed while writing it
                repaired = "\n".join(lines[:index]) + ("\n" if index else "")
                print(f"note: {where} is incomplete (interrupted run); dropping it", file=sys.stderr)
                break
            raise UserError(f"{where} is not a JSON record; expected the JSONL written by {fmt.runner} "
                            "(use another --answers-file, or --overwrite to replace it)") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
        kind = guess_record_kind(record)
        missing = [k for k in fmt.required if k not in record]
        if kind != fmt.kind or missing:
            found = _KIND_NAMES.get(kind or "", "an unknown record (keys: " + ", ".join(sorted(record)[:10]) + ")")
            raise UserError(f"{where} holds {found}, not an answer of {fmt.runner}; this answers file belongs to "
                            "another benchmark (use another --answers-file, or --overwrite to replace it)")
        try:
            key = fmt.key_of(record)
            hash(key)
        except (KeyError, TypeError):
            raise UserError(f"{where}: record has no usable question key; is it an answer of {fmt.runner}?") from None
        if key not in all_keys:
            raise UserError(f"{where}: question {_describe_key(key)} is not in {question_source}; the file holds "
                            "answers to other questions (another benchmark?). Use another --answers-file, or "
                            "--overwrite to replace it")
        if key not in chunk_keys:
            raise UserError(f"{where}: question {_describe_key(key)} belongs to another shard than this "
                            "--chunk-idx/--num-chunks; every shard needs its own --answers-file")
        if fmt.model_field and model_name is not None and record.get(fmt.model_field) != model_name:
            raise UserError(f"{where}: answer of model {record.get(fmt.model_field)!r}, but this run uses "
                            f"{model_name!r}; use another --answers-file, or --overwrite to replace it")
        records.append(record)
    if repaired is None and text and not text.endswith("\n"):
        repaired = text + "\n"  # the last record lacks its newline: appending must start a new line
    if repaired is not None:
        _atomic_write(path, repaired)
    return records


def _atomic_write(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _reorder(path: str, records: list[dict], items: list[EvalItem], fmt: AnswerFormat) -> int:
    """Rewrite the answers in question order (one record per item, duplicates dropped); returns #dropped."""
    buckets: dict[Hashable, list[dict]] = {}
    for record in records:
        buckets.setdefault(fmt.key_of(record), []).append(record)
    ordered = []
    for item in items:
        bucket = buckets.get(item.key)
        if bucket:
            ordered.append(bucket.pop(0))
    dropped = len(records) - len(ordered)
    text = "".join(json.dumps(r) + "\n" for r in ordered)
    current = "".join(json.dumps(r) + "\n" for r in records)
    if text != current:
        _atomic_write(path, text)
    return dropped


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
        self.prefix = model.image_prefix()

    def prompt(self, item: EvalItem) -> str:
        return build_prompt(self.conv_mode, self.prefix * item.n_images + item.text)

    def __call__(self, batch: list[EvalItem], images: list[list]) -> list[str]:
        from mgm.inference.requests import Request

        engine = self.model.engine
        model = engine.model
        if hasattr(model, "update_prompt"):  # the original's hook (no MGM model defines it)
            model.update_prompt([[item.text] for item in batch])
        requests = [Request(self.prompt(item), imgs, self.params) for item, imgs in zip(batch, images)]
        out = engine.generate_ids(requests)
        texts = engine.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [self.fmt.clean(t) for t in texts]


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
        dropped = _reorder(answers_file, records, chunk, fmt)
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


# ------------------------------------------------------------------------- VQA-style question files
def read_question_jsonl(path: str, required: Sequence[str], expected: str) -> list[tuple[int, dict]]:
    """`(line number, record)` of a JSONL question file; a wrong format is a UserError naming file and line."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise UserError(f"--question-file {path} does not exist")
    out = []
    with open(path, encoding="utf-8") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError:
            raise UserError(f"--question-file {path} is not UTF-8 text; expected {expected}") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"question file {path}, line {lineno}: not a JSON object per line; "
                            f"expected {expected}") from None
        if not isinstance(record, dict):
            raise UserError(f"question file {path}, line {lineno}: expected a JSON object, got "
                            f"{type(record).__name__}; expected {expected}")
        missing = [k for k in required if k not in record]
        if missing:
            raise UserError(f"question file {path}, line {lineno}: missing key {missing[0]!r}; expected {expected}")
        out.append((lineno, record))
    return out


def _image_loader(folder: str, name: str) -> Callable[[], list]:
    def load() -> list:
        from mgm.data.image import open_image

        return [open_image(os.path.join(folder, name))]

    return load


VQA_FORMAT = AnswerFormat(
    kind="vqa", runner="model_vqa_loader",
    required=("question_id", "prompt", "text", "answer_id", "model_id", "metadata"),
    key_of=lambda r: (r["question_id"], r["prompt"]),
)


def vqa_items(question_file: str, image_folder: str) -> list[EvalItem]:
    """Items of a LLaVA-style JSONL `{question_id, image, text}` (TextVQA, MME, MM-Vet, POPE, GQA, ...).

    Resume key: (question_id, text) — TextVQA and MME reuse one question_id for several questions.
    """
    import shortuuid

    expected = "JSONL lines {question_id, image, text} (LLaVA-style benchmark questions)"
    items = []
    for lineno, q in read_question_jsonl(question_file, ("question_id", "image", "text"), expected):
        if not isinstance(q["text"], str) or not isinstance(q["image"], str):
            raise UserError(f"question file {question_file}, line {lineno}: 'text' and 'image' must be strings")
        if isinstance(q["question_id"], (list, dict)):
            raise UserError(f"question file {question_file}, line {lineno}: 'question_id' must be a string or number")

        def make(answer: str, name: str, q: dict = q) -> dict:
            return {"question_id": q["question_id"], "prompt": q["text"], "text": answer,
                    "answer_id": shortuuid.uuid(), "model_id": name, "metadata": {}}

        items.append(EvalItem(key=(q["question_id"], q["text"]), text=q["text"], n_images=1,
                              load_images=_image_loader(image_folder, q["image"]), make_record=make,
                              where=f"question file {question_file}, line {lineno}"))
    return items


def entry_point(run: Callable[..., "RunResult"]) -> Callable[..., "RunResult"]:
    """A runner module's `main(argv=None, model=None)`: its `run`, with bad input reported as one line on
    stderr (exit status 2) instead of a traceback."""
    @exit_on_user_error
    def main(argv: Sequence[str] | None = None, model: "EvalModel | None" = None) -> "RunResult":
        return run(argv, model)

    main.__doc__ = f"CLI entry of {run.__module__}: `run` with bad input reported as one line on stderr."
    return main
