"""`--help` of every entry point answers without loading torch, transformers or gradio.

Those imports cost seconds (a worker's `--help` took 6-24 s before arguments were parsed first), so
each entry point parses its command line before importing them. Checked by what a fresh interpreter has
in `sys.modules` after printing the help, not by timing. The entry points are found, not listed: every
module of the package with a `__main__` block, and every `mgm` subcommand.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mgm.__main__ import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "gradio")

# Runs one entry point with --help in this fresh interpreter, then reports what it imported.
PROBE = r"""
import json, runpy, sys
kind, target = sys.argv[1], sys.argv[2]
code = None
try:
    if kind == "module":
        sys.argv = [target, "--help"]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    elif kind == "path":
        sys.argv = [target, "--help"]
        runpy.run_path(target, run_name="__main__")
    else:
        from mgm.__main__ import main
        code = main([*target.split(), "--help"])
except SystemExit as exc:
    code = exc.code
heavy = [m for m in %r if m in sys.modules]
sys.stderr.write("\nPROBE " + json.dumps({"code": code, "heavy": heavy}) + "\n")
""" % (HEAVY,)


def _entry_modules() -> list[str]:
    found = []
    for path in sorted((ROOT / "mgm").rglob("*.py")):
        if 'if __name__ == "__main__"' in path.read_text(encoding="utf-8"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__main__" else parts))
    return found


ENTRY_MODULES = _entry_modules()
SUBCOMMANDS = [" ".join(words) for words, _, _ in COMMANDS]
# scripts run by path, as the original's commands and the deepspeed launcher do
SCRIPTS = ["mgm/train/train.py", "mgm/train/train_mem.py", "scripts/merge_lora_weights.py",
           *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "scripts").glob("convert_*.py"))]


def _probe(kind: str, target: str) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE, kind, target], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("PROBE ")]
    assert line, f"{target}: no report; stderr:\n{proc.stderr[-2000:]}"
    return json.loads(line[-1][len("PROBE "):]), proc.stdout


def test_entry_points_are_found():
    # the discovery above must see the entry points the README names, or the test below checks nothing
    for module in ("mgm", "mgm.serve.cli", "mgm.serve.controller", "mgm.serve.model_worker",
                   "mgm.serve.gradio_web_server", "mgm.serve.vllm_worker", "mgm.train.train",
                   "mgm.eval.model_vqa_loader", "mgm.eval.eval_mme", "mgm.zoo.tiny", "mgm.model.export"):
        assert module in ENTRY_MODULES


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_module_help_loads_no_heavy_library(module):
    report, out = _probe("module", module)
    assert report["code"] in (0, None), f"python -m {module} --help exited with {report['code']}"
    assert "usage:" in out
    assert report["heavy"] == [], f"python -m {module} --help imported {report['heavy']}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help_loads_no_heavy_library(script):
    report, out = _probe("path", script)
    assert report["code"] in (0, None), f"python {script} --help exited with {report['code']}"
    assert "usage:" in out
    assert report["heavy"] == [], f"python {script} --help imported {report['heavy']}"


@pytest.mark.parametrize("words", SUBCOMMANDS)
def test_subcommand_help_loads_no_heavy_library(words):
    report, out = _probe("mgm", words)
    assert report["code"] in (0, None), f"mgm {words} --help exited with {report['code']}"
    assert out.startswith(f"usage: mgm {words}")
    assert report["heavy"] == [], f"mgm {words} --help imported {report['heavy']}"


def test_train_help_all_still_lists_transformers_flags():
    proc = subprocess.run([sys.executable, "-m", "mgm.train.train", "--help-all"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in ("--learning_rate", "--deepspeed", "--tune_mm_mlp_adapter", "--image_size_aux", "--config"):
        assert flag in proc.stdout


def test_quick_train_help_names_every_flag_mgm_adds():
    import dataclasses

    from mgm.train.arg_fields import DataArguments, MGMTrainingFields, ModelArguments

    _, out = _probe("module", "mgm.train.train")
    for cls in (ModelArguments, DataArguments, MGMTrainingFields):
        for f in dataclasses.fields(cls):
            assert f"--{f.name}" in out


def test_export_file_names_match_transformers():
    from transformers.utils import CHAT_TEMPLATE_DIR, CHAT_TEMPLATE_FILE, PROCESSOR_NAME

    from mgm.model.export import PROCESSOR_DIRS, PROCESSOR_FILES

    assert PROCESSOR_FILES == (PROCESSOR_NAME, CHAT_TEMPLATE_FILE)
    assert PROCESSOR_DIRS == (CHAT_TEMPLATE_DIR,)
