"""File helpers shared by the benchmark scorers: read JSON/JSONL/TSV with errors that name the file.

Every scorer CLI reads user files (answer JSONL, annotation JSON, ...). A missing file, a line that is
not JSON or a record without a needed key must stop the run with ONE line naming the file, the line
and the key, never a traceback. These helpers raise `mgm.errors.UserError` for that; the CLIs wrap
their `main` with `mgm.errors.exit_on_user_error`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from mgm.errors import UserError


def require_file(path: str | os.PathLike, what: str = "file") -> str:
    """Return `path` as str if it is an existing regular file, else raise UserError naming it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise UserError(f"{what} is not a regular file: {path}")
    return path


def require_dir(path: str | os.PathLike, what: str = "directory") -> str:
    """Return `path` as str if it is an existing directory, else raise UserError naming it."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise UserError(f"{what} not found or not a directory: {path}")
    return path


def load_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Load a whole JSON document; a missing file or invalid JSON raises UserError naming the file."""
    path = require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} {path} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text: {exc.reason}") from None


def iter_jsonl(path: str | os.PathLike, what: str = "JSONL file") -> Iterator[tuple[int, Any]]:
    """Yield `(line_number, record)` for each non-blank line of a JSONL file (1-based line numbers)."""
    path = require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(
                        f"{what} {path}, line {lineno}: not a JSON object per line ({exc.msg}); "
                        "expected JSONL (one JSON object per line)"
                    ) from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text: {exc.reason}") from None


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = (), what: str = "answers file") -> list[dict]:
    """Read a JSONL file of objects, checking each has the `required` keys.

    Raises:
        UserError: the file is missing, a line is not JSON / not an object, or a key is missing
            (the message names the file, the line and the key).
    """
    required = tuple(required)
    records = []
    for lineno, record in iter_jsonl(path, what):
        if not isinstance(record, dict):
            raise UserError(f"{what} {os.fspath(path)}, line {lineno}: expected a JSON object, "
                            f"got {type(record).__name__}")
        check_keys(record, required, f"{what} {os.fspath(path)}, line {lineno}")
        records.append(record)
    return records


def check_keys(record: dict, required: Iterable[str], where: str) -> None:
    """Raise UserError naming `where` and the first missing key of `record`."""
    for key in required:
        if key not in record:
            present = ", ".join(sorted(map(str, record))[:12])
            raise UserError(f"{where}: missing key {key!r} (keys present: {present}); is this the right file?")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temporary file + rename, so a crash never leaves half a file."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_json(path: str | os.PathLike, data: Any, indent: int | None = 4) -> None:
    """Write `data` as JSON (atomically), creating parent directories."""
    atomic_write_text(path, json.dumps(data, indent=indent))


def backup_file(path: str | os.PathLike, suffix: str = ".bak") -> str:
    """Copy `path` to `path + suffix` (overwriting an older backup) and return the backup path."""
    path = os.fspath(path)
    backup = path + suffix
    shutil.copy2(path, backup)
    return backup


def ensure_parent_dir(path: str | os.PathLike) -> None:
    """Create the parent directory of `path` if needed (the original scripts assumed it existed)."""
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
