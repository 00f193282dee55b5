"""`ruff check mgm` passes with the rule set configured in pyproject.toml (docstring rules included)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes_on_the_package():
    pytest.importorskip("ruff", reason="ruff is in the `test` extra: pip install -e '.[test]'")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "mgm"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_rule_set_includes_module_docstrings():
    tomllib = pytest.importorskip("tomllib")
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert "D100" in lint["select"] and "F" in lint["select"]
