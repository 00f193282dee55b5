"""What the controller reads from a worker, bounded: a worker is a process that registered, not a
party the controller trusts.

A worker's status, its generation stream and its `/v1` answers are read with byte limits
(`read_bounded`, `Upstream.relay(limit)`), its model list with a count and length limit
(`check_status`), and its answers are logged as one-line summaries (`status_summary`), so one
misbehaving worker cannot freeze the controller's event loop, fill its memory or its log, or make
`/v1/models` expensive for every client.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from mgm.serve.protocol import WorkerStatus

DEFAULT_MAX_STATUS_BYTES = 256 * 1024  # an mgm worker's status is under 2 KB
DEFAULT_MAX_MODEL_NAMES = 16  # per worker
DEFAULT_MAX_NAME_CHARS = 256
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024  # one stream message: the prompt echo + answer (+ a generated JPEG)
DEFAULT_MAX_ANSWER_BYTES = 16 * 1024 * 1024  # a non-stream /v1 answer or an error body
DEFAULT_MAX_STREAM_BYTES = 1024 * 1024 * 1024  # a whole relayed stream
DEFAULT_MAX_WORKERS = 256


class WorkerAnswerTooLarge(Exception):
    """A worker sent more than the controller reads from it."""


@dataclass(frozen=True)
class UpstreamLimits:
    """The controller's bounds on what it reads from workers (see the module docstring)."""

    max_status_bytes: int = DEFAULT_MAX_STATUS_BYTES
    max_model_names: int = DEFAULT_MAX_MODEL_NAMES
    max_name_chars: int = DEFAULT_MAX_NAME_CHARS
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    max_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES
    max_workers: int = DEFAULT_MAX_WORKERS


async def read_bounded(pieces: AsyncIterator[bytes], limit: int, what: str) -> bytes:
    """All of `pieces`, or WorkerAnswerTooLarge as soon as they pass `limit` bytes."""
    data = bytearray()
    async for piece in pieces:
        data += piece
        if len(data) > limit:
            raise WorkerAnswerTooLarge(f"{what} is over the controller's limit of {limit} bytes")
    return bytes(data)


def check_status(status: WorkerStatus, limits: UpstreamLimits) -> None:
    """ValueError when a worker's status lists too many models, or an over-long or empty name."""
    names = status.model_names
    if len(names) > limits.max_model_names:
        raise ValueError(f"it lists {len(names)} models (the controller takes at most {limits.max_model_names})")
    for name in names:
        if not name.strip() or len(name) > limits.max_name_chars:
            raise ValueError(f"it lists a model name of {len(name)} characters (1 to {limits.max_name_chars} "
                             "allowed)")
    if not 0 <= status.queue_length <= 1_000_000 or not 0 <= status.speed <= 1_000_000:
        raise ValueError(f"its queue_length {status.queue_length} or speed {status.speed} is out of range")


def status_summary(status: WorkerStatus) -> str:
    """One short log line for a status (never the whole of it)."""
    names = status.model_names
    shown = ", ".join(name[:64] for name in names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
    return f"models [{shown}], speed {status.speed:g}, queue {status.queue_length}"
