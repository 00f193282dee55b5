"""The original `mgm/utils.py` names, for scripts written against the original package.

`disable_torch_init`, `build_logger`, `StreamToLogger`, `violates_moderation`, `pretty_print_semaphore`,
`server_error_msg`, `moderation_msg` behave as the original's, with one difference: `build_logger` leaves
`sys.stdout` / `sys.stderr` alone unless `redirect_std=True` is passed (the original always replaced
them with logger-backed streams, which swallows the output of everything else in the process).
"""
from __future__ import annotations

import logging
import os
import sys

from mgm.constants import LOGDIR
from mgm.constants import MODERATION_MSG as moderation_msg  # noqa: F401 (original name)
from mgm.constants import SERVER_ERROR_MSG as server_error_msg  # noqa: F401 (original name)
from mgm.serve.logging_utils import build_logger as _build_logger

MODERATION_URL = "https://api.openai.com/v1/moderations"


class StreamToLogger:
    """File-like object that sends each complete line written to it to `logger` at `log_level`."""

    def __init__(self, logger: logging.Logger, log_level: int = logging.INFO) -> None:
        self.terminal = sys.stdout
        self.logger = logger
        self.log_level = log_level
        self.linebuf = ""

    def __getattr__(self, attr):
        return getattr(self.terminal, attr)

    def write(self, buf: str) -> None:
        pending = self.linebuf + buf
        self.linebuf = ""
        for line in pending.splitlines(True):
            if line.endswith("\n"):
                self.logger.log(self.log_level, line.rstrip())
            else:
                self.linebuf += line  # an unfinished line waits for the rest (or for flush)

    def flush(self) -> None:
        if self.linebuf:
            self.logger.log(self.log_level, self.linebuf.rstrip())
        self.linebuf = ""


def build_logger(logger_name: str, logger_filename: str, redirect_std: bool = False,
                 logdir: str | None = None) -> logging.Logger:
    """A logger writing to stderr and to the daily-rotating `<logdir>/<logger_filename>` (logdir: LOGDIR).

    `redirect_std=True` also replaces `sys.stdout` (INFO) and `sys.stderr` (ERROR) with streams that
    log each line, as the original did unconditionally.
    """
    logger = _build_logger(logger_name, logger_filename, logdir=logdir if logdir is not None else LOGDIR)
    if redirect_std:
        for name, level in (("stdout", logging.INFO), ("stderr", logging.ERROR)):
            std_logger = logging.getLogger(name)
            std_logger.setLevel(level)
            if not std_logger.handlers:
                for handler in logger.handlers:
                    if isinstance(handler, logging.FileHandler):
                        std_logger.addHandler(handler)
            stream = StreamToLogger(std_logger, level)
            setattr(sys, name, stream)
    return logger


def disable_torch_init() -> None:
    """Make `torch.nn.Linear` / `LayerNorm` skip their random initialisation (the original's speed-up).

    Global and permanent for the process, as in the original: modules created afterwards start with
    uninitialised weights, which is fine only when every weight is then loaded from a checkpoint.
    """
    import torch

    torch.nn.Linear.reset_parameters = lambda self: None
    torch.nn.LayerNorm.reset_parameters = lambda self: None


def violates_moderation(text: str, timeout: float = 5.0) -> bool:
    """Whether OpenAI's moderation endpoint flags `text` (needs OPENAI_API_KEY; newlines are removed).

    A failed request or an unexpected answer counts as not flagged, as in the original.
    """
    import requests

    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        raise KeyError("OPENAI_API_KEY is not set; violates_moderation needs an OpenAI API key")
    try:
        response = requests.post(MODERATION_URL, json={"input": text.replace("\n", "")}, timeout=timeout,
                                 headers={"Authorization": "Bearer " + key})
        return bool(response.json()["results"][0]["flagged"])
    except (requests.exceptions.RequestException, ValueError, KeyError, IndexError, TypeError):
        return False


def pretty_print_semaphore(semaphore) -> str:
    """'Semaphore(value=N, locked=B)', or 'None' for no semaphore."""
    if semaphore is None:
        return "None"
    return f"Semaphore(value={semaphore._value}, locked={semaphore.locked()})"
