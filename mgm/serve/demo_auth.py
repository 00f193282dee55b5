"""The web demo's own login (Gradio's `auth=`), so that reaching its port is not enough to chat
through a protected controller.

`--demo-auth user:password`, or `--demo-auth FILE` with one `user:password` per line (blank lines
and `#` comments skipped). The login is on by default whenever the demo is reachable beyond this
machine (a non-loopback `--host`, or `--share`) or the controller needs a key (`--api-key`): without
`--demo-auth` the demo then makes up a password for the user `mgm` and prints it once on stderr
(never into the log). `--demo-auth none` turns the login off on purpose.
"""
from __future__ import annotations

import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from mgm.errors import UserError
from mgm.serve.worker_registry import is_loopback

DEFAULT_USER = "mgm"
OFF = "none"


def parse_credentials(spec: str) -> list[tuple[str, str]]:
    """`user:password`, or the path of a file of such lines → [(user, password), ...] (UserError if bad)."""
    path = Path(spec).expanduser()
    if ":" not in spec or path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UserError(f"--demo-auth {spec!r} is neither user:password nor a readable file ({exc.strerror})"
                            ) from None
        where = f"{spec}"
    else:
        lines, where = [spec], "--demo-auth"
    pairs = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise UserError(f"{where} line {number}: expected user:password with both parts non-empty")
        pairs.append((user.strip(), password))
    if not pairs:
        raise UserError(f"{where}: no user:password entry")
    return pairs


def login_needed(host: str, share: bool, api_key: str | None) -> bool:
    """The demo is reachable beyond this machine, or the controller behind it needs a key."""
    return share or not is_loopback(host) or bool(api_key)


def resolve_demo_auth(spec: str | None, *, host: str, share: bool, api_key: str | None,
                      announce: Callable[[str], None] | None = None) -> list[tuple[str, str]] | None:
    """The credentials for Gradio's `auth=` (None = no login), by the rules in the module docstring."""
    if spec is not None and spec.strip().lower() == OFF:
        if login_needed(host, share, api_key):
            (announce or _to_stderr)("The web demo runs without a login (--demo-auth none): anyone who reaches "
                                     "its port can chat through the controller")
        return None
    if spec:
        return parse_credentials(spec)
    if not login_needed(host, share, api_key):
        return None
    password = secrets.token_urlsafe(12)
    (announce or _to_stderr)(f"The web demo asks for a login: user {DEFAULT_USER!r}, password {password!r} "
                             "(made up for this run; set your own with --demo-auth user:password or a file)")
    return [(DEFAULT_USER, password)]


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
