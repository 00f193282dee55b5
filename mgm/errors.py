"""User-facing errors: bad input that should stop with one clear message, never a traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Bad input from the user (a file, flag, key or value). The message names it and what would be valid."""


def exit_on_user_error(main: F) -> F:
    """Wrap a CLI `main` so a UserError prints one line to stderr and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
