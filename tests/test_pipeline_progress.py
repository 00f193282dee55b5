"""The embedded demo's progress on terminals: a bar where there is room, plain lines on a zero-width one.

tqdm sizes its bar to the terminal and prints nothing at 0 columns, so a demo started in a pseudo-terminal
that reports no size (CI runners, process managers) showed no progress for its whole run. These tests
run `python -m mgm.zoo.pipeline step` with its stderr on a real pseudo-terminal of a chosen size.
"""
from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from mgm.zoo.pipeline import shows_bar

ROOT = Path(__file__).resolve().parents[1]
# a training-like command: one "{'loss': ...}" record per step, 4 steps, slower than the line interval
TRAIN_LIKE = "import time\nfor i in range(4):\n    print({'loss': 1.0}, flush=True)\n    time.sleep(0.6)"


def _pty_of_width(columns: int) -> tuple[int, int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24 if columns else 0, columns, 0, 0))
    return master, slave


def _run_step_on_pty(tmp_path: Path, columns: int, progress: str = "auto") -> str:
    """stderr of one pipeline step whose stderr is a pseudo-terminal `columns` wide."""
    master, slave = _pty_of_width(columns)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mgm.zoo.pipeline", "step", "--name", "train", "--log", str(tmp_path / "t.log"),
         "--progress", progress, "--count", r"\{'loss': ", "--total", "4", "--line-every", "0.5",
         "--", sys.executable, "-c", TRAIN_LIKE],
        stdout=subprocess.DEVNULL, stderr=slave, env=env, cwd=ROOT)
    os.close(slave)
    chunks = []
    deadline = time.time() + 120
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    return b"".join(chunks).decode(errors="replace")


def test_zero_width_terminal_gets_plain_progress_lines(tmp_path):
    out = _run_step_on_pty(tmp_path, columns=0)
    lines = [ln.strip() for ln in out.replace("\r", "\n").splitlines()]
    counted = [ln for ln in lines if ln.startswith("train: ") and "/4 (" in ln]
    assert "-> train ..." in lines
    assert len(counted) >= 2, out
    done = [int(ln.split(": ")[1].split("/")[0]) for ln in counted]
    assert done == sorted(done) and done[-1] >= 2 and "elapsed" in counted[-1]


def test_zero_width_terminal_gets_lines_even_when_bars_are_forced(tmp_path):
    out = _run_step_on_pty(tmp_path, columns=0, progress="always")
    assert "-> train ..." in out and "/4 (" in out


def test_terminal_with_a_width_gets_the_bar(tmp_path):
    out = _run_step_on_pty(tmp_path, columns=100)
    assert "-> train ..." not in out  # the plain-line header is for bar-less output only
    assert "train: 100%|" in out and "4/4" in out


@pytest.mark.parametrize("columns,setting,expected", [(0, None, False), (0, True, False), (80, None, True),
                                                      (80, False, False)])
def test_shows_bar_on_terminals(columns, setting, expected):
    master, slave = _pty_of_width(columns)
    try:
        with open(slave, "w", closefd=False) as stream:
            assert shows_bar(stream, setting) is expected
    finally:
        os.close(master)
        os.close(slave)


def test_shows_bar_off_a_terminal(tmp_path):
    with open(tmp_path / "log.txt", "w") as stream:
        assert shows_bar(stream) is False
        assert shows_bar(stream, True) is True  # a forced bar in a pipe or file stays possible
