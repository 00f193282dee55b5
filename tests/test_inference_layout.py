"""Structure checks of the engine / eval split: one definition per sampling rule, scorers inside the package."""
from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import mgm
from mgm.eval.benchmarks import BENCHMARKS

PACKAGE = Path(mgm.__file__).resolve().parent


def _sources() -> dict[Path, str]:
    """Every module of the package: the engine, its front ends, the processor, the profile, training."""
    return {p: p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}


def test_each_sampling_rule_is_defined_once():
    patterns = {
        "greedy threshold": r"temperature\s*>\s*0\.001|GREEDY_MAX_TEMPERATURE\s*=",
        "top-k default": r"\b50\b if top_k is None|DEFAULT_TOP_K\s*=",
        "pad fallback": r"pad_token_id if .*pad_token_id is not None|FALLBACK_PAD_ID\s*=",
        "context check": r"\+ 1 > limit",
    }
    for rule, pattern in patterns.items():
        hits = [(p.relative_to(PACKAGE), line) for p, text in _sources().items()
                for line in text.splitlines() if re.search(pattern, line)]
        assert len(hits) == 1, (rule, hits)


def test_every_scorer_and_converter_lives_in_the_installed_package():
    for bench in BENCHMARKS.values():
        module = inspect.getmodule(bench.scorer)
        assert module is not None and Path(module.__file__).resolve().is_relative_to(PACKAGE), bench.name
        for name in (bench.runner, *bench.converters):
            spec_file = Path(importlib.import_module(name).__file__).resolve()
            assert spec_file.is_relative_to(PACKAGE), (bench.name, name)
    for path in (PACKAGE / "eval" / "cli.py", PACKAGE / "eval" / "benchmark_scorers.py"):
        text = path.read_text(encoding="utf-8")
        assert "runpy" not in text and "run_path" not in text, path
