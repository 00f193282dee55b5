"""The README's worked examples, for tests that run them exactly as written.

A worked example is the ```bash block that follows a line `<!-- example: NAME -->` in README.md.
`run_example` runs blocks with bash (`set -euo pipefail`) in a folder, with a toolkit venv's bin/ first
on PATH, as `source <venv>/bin/activate` would.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def example(name: str) -> str:
    """The text of the bash block after `<!-- example: NAME -->`."""
    text = README.read_text()
    found = re.search(rf"<!-- example: {re.escape(name)} -->\n```bash\n(.*?)\n```", text, re.S)
    assert found, f"README.md has no example {name!r}"
    return found.group(1)


def run_example(names: list[str], cwd: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run the examples `names`, in order, in one bash in `cwd` with this python's venv activated."""
    script = "set -euo pipefail\n" + "\n".join(example(n) for n in names) + "\n"
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "VIRTUAL_ENV": str(Path(bindir).parent),
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
