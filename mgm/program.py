"""How a command names itself in its `--help` usage line.

Run through the `mgm` dispatcher (`mgm chat ...`), `sys.argv[0]` holds the words typed (the dispatcher
sets it, as a console script sets its own name); run as a module it holds the file path, so the tool's
module form (`python -m mgm.serve.cli`) is shown instead of `cli.py`.
"""
from __future__ import annotations

import sys

DISPATCHER = "mgm"


def program_name(module_form: str) -> str:
    """`mgm chat` when started by the dispatcher, else `module_form` (e.g. "python -m mgm.serve.cli")."""
    argv0 = sys.argv[0] if sys.argv else ""
    return argv0 if argv0.startswith(DISPATCHER + " ") else module_form
