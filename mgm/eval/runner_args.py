"""Flags and sharding shared by every answer runner (`python -m mgm.eval.model_*`): the original's names and defaults."""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from mgm.errors import UserError


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
