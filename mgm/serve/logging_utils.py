"""Logging set-up for the mgm servers: a named logger that writes to stderr and to a daily-rotating file.

Unlike the original `build_logger` (docs/original.md#utils) this never replaces `sys.stdout` /
`sys.stderr` and touches no logger but the one it builds; nothing happens at import. The log directory
is `logdir` (the servers' `--log-dir`), else the environment variable `MGM_LOGDIR`, else one folder per
user: `$XDG_STATE_HOME/mgm/logs`, i.e. `~/.local/state/mgm/logs` (the original wrote into the current
folder, so every server started elsewhere left its logs somewhere else).
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys

LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LOGDIR_ENV = "MGM_LOGDIR"


def default_logdir() -> str:
    """`$XDG_STATE_HOME/mgm/logs`, else `~/.local/state/mgm/logs`."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "mgm", "logs")


def get_logdir(logdir: str | os.PathLike[str] | None = None) -> str:
    """`logdir` if given, else `$MGM_LOGDIR`, else `default_logdir()`."""
    if logdir is not None:
        return os.fspath(logdir)
    return os.environ.get(LOGDIR_ENV) or default_logdir()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at emit time (so test capture and redirection keep working)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401 - property required by StreamHandler
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; ignore
        pass


_MARK = "_mgm_build_logger"  # attribute set on the handlers build_logger owns


def build_logger(name: str, filename: str | None = None, logdir: str | os.PathLike[str] | None = None,
                 level: int = logging.INFO) -> logging.Logger:
    """Return `logging.getLogger(name)` logging to stderr and, if `filename`, to `<logdir>/<filename>`.

    The file rotates daily (UTC midnight, UTF-8), as the original's does. Calling again with the same
    name replaces the handlers this function added before (no duplicated lines). If the file cannot be
    opened the logger keeps stderr only and says so once.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    # our own handlers below; don't also print through the root logger's handlers
    logger.propagate = False
    for handler in [h for h in logger.handlers if getattr(h, _MARK, False)]:
        logger.removeHandler(handler)
        handler.close()

    formatter = logging.Formatter(LOG_FORMAT, datefmt=DATE_FORMAT)
    stderr_handler = _StderrHandler()
    stderr_handler.setFormatter(formatter)
    setattr(stderr_handler, _MARK, True)
    logger.addHandler(stderr_handler)

    if filename:
        directory = get_logdir(logdir)
        path = os.path.join(directory, filename)
        try:
            os.makedirs(directory, exist_ok=True)
            file_handler = logging.handlers.TimedRotatingFileHandler(path, when="D", utc=True, encoding="utf-8")
        except OSError as exc:
            logger.warning("cannot write the log file %s (%s); logging to stderr only "
                           "(set %s or the log-dir flag to a writable folder)", path, exc, LOGDIR_ENV)
        else:
            file_handler.setFormatter(formatter)
            setattr(file_handler, _MARK, True)
            logger.addHandler(file_handler)
    return logger
