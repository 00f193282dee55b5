"""Helpers of the embedded demo pipeline (`scripts/tiny/run_all.sh`): run a step quietly, then summarise.

Two commands, both called by the shell script:

    python -m mgm.zoo.pipeline step --name "stage 2 (MGM)" --log OUT/logs/x.log --timings OUT/timings.json \\
        -- CMD [ARGS...]
    python -m mgm.zoo.pipeline summary --out OUT --data-root DATA/MGM-Eval --work-dir OUT \\
        --run MGM:CKPT:TRAIN_DIR --run LR-only:CKPT:TRAIN_DIR [--split mmbench_dev_tiny] [--cli-answer FILE]

`step` runs CMD with its output sent to the log file and shows its progress instead: on a terminal ONE
bar, in a pipe or log (or on a terminal that reports zero columns, where tqdm draws nothing at all) a
plain line every `--line-every` seconds, driven by the `n/total` counters the
command's own tqdm bars write into the log (questions answered), by the count of log lines matching
`--count REGEX` out of `--total` (training steps), or a timer. Several
commands separated by `:::` (one `--log` each) run side by side under one bar. It records the wall time
and the peak memory of the whole process tree(s) (resident set size, sampled every 0.2 s) in the
timings file, and on failure prints the end of the failing log and exits with the command's status.

`summary` reads what the real scorers left behind (`mgm.zoo.scores`), the training loss curves and
the timings, and writes `OUT/summary.md` (printed too), `OUT/summary.json` and `OUT/summary.png`
(`mgm.zoo.report`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from mgm.errors import UserError, exit_on_user_error
from mgm.zoo.report import write_summary
from mgm.zoo.scores import Run

_TQDM_COUNTER = re.compile(r"(\d+)/(\d+) \[")


# ----------------------------------------------------------------------------------------------- step

def _tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (0 when it is gone)."""
    try:
        import psutil
    except ImportError:  # psutil comes with the train extra (DeepSpeed); without it report the child only
        import resource

        return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _last_counter(text: str) -> tuple[int, int] | None:
    """The last `n/total [` counter a tqdm bar wrote into `text`."""
    found = None
    for match in _TQDM_COUNTER.finditer(text):
        found = match
    return (int(found.group(1)), int(found.group(2))) if found else None


class _LogWatcher:
    """Follows one log file and extracts its progress: matching lines (count mode) or the last tqdm counter."""

    def __init__(self, path: Path, count: re.Pattern | None) -> None:
        self.path, self.count = path, count
        self.pos, self.tail, self.partial, self.matched = 0, "", "", 0

    def progress(self) -> tuple[int, int] | None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                chunk = f.read().decode("utf-8", "replace")
                self.pos = f.tell()
        except OSError:
            return None
        self.tail = (self.tail + chunk)[-4000:]
        if self.count is None:
            return _last_counter(self.tail)
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()
        self.matched += sum(1 for line in lines if self.count.search(line))
        return self.matched, 0


def terminal_columns(stream) -> int | None:
    """The width of the terminal `stream` writes to, or None when it is not a terminal."""
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else None
    except (AttributeError, OSError, ValueError):
        return None


def shows_bar(stream, setting: bool | None = None) -> bool:
    """Whether progress on `stream` is a redrawn bar (else plain lines).

    `setting` None (auto): a bar on a terminal. True forces the bar (e.g. a pipe read by a terminal
    program), False forces lines. A terminal that reports 0 columns (some pseudo-terminals of CI
    runners and process managers) always gets lines: tqdm sizes its bar to the width and prints nothing.
    """
    columns = terminal_columns(stream)
    if columns == 0:
        return False
    return columns is not None if setting is None else setting


def run_step(name: str, commands: Sequence[Sequence[str]], logs: Sequence[Path], timings: Path | None,
             show: bool | None = None, count: str | None = None, total: int | None = None,
             line_every: float = 30.0) -> int:
    """Run the commands side by side, each with stdout+stderr to its log; one progress line on stderr.

    Returns the first non-zero exit status (0 when all succeed). Progress: with `count` (a regex) and
    `total` (per command), the log lines matching `count` (e.g. the Trainer's per-step `{'loss': ...}`
    records); otherwise the last tqdm `n/total` counter of each log, summed. The recorded peak memory is
    that of all the commands' process trees together. Without a terminal (`show` False) a plain
    progress line is printed every `line_every` seconds instead of the bar; a terminal of zero width gets
    the lines too (`shows_bar`).
    """
    from tqdm import tqdm

    if not commands or any(not c for c in commands):
        raise UserError("step: give each command after `--` (several are separated by `:::`)")
    if len(logs) != len(commands):
        raise UserError(f"step {name!r}: {len(commands)} command(s) but {len(logs)} --log file(s)")
    show = shows_bar(sys.stderr, show)
    start = time.perf_counter()
    peak = 0
    outs, procs = [], []
    for command, log in zip(commands, logs):
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "wb")
        outs.append(out)
        try:
            procs.append(subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT))
        except OSError as exc:
            for p in procs:
                p.kill()
            raise UserError(f"step {name!r}: cannot start {command[0]!r}: {exc.strerror or exc}") from None
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, sum(_tree_rss_bytes(p.pid) for p in procs))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    bar = tqdm(total=None, desc=name, leave=True, disable=not show, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
    if not show:
        print(f"-> {name} ...", file=sys.stderr, flush=True)
    count_re = re.compile(count) if count else None
    watchers = [_LogWatcher(log, count_re) for log in logs]
    last_line = time.perf_counter()
    while any(p.poll() is None for p in procs):
        time.sleep(0.5)
        counters = [w.progress() for w in watchers]
        n = sum(c[0] for c in counters if c)
        expected = (total or 0) * len(procs) if count_re is not None else sum(c[1] for c in counters if c)
        if not show:
            # Logs and pipes get a plain line every `line_every` seconds instead of a redrawn bar.
            if time.perf_counter() - last_line >= line_every:
                last_line = time.perf_counter()
                print(progress_line(name, n, expected, last_line - start), file=sys.stderr, flush=True)
            continue
        if expected > 0:
            if bar.total != expected:
                bar.reset(total=expected)
            bar.n = min(n, expected)
        else:
            bar.bar_format = "{desc}: {elapsed}"
        bar.refresh()
    stop.set()
    sampler.join()
    for out in outs:
        out.close()
    if show and bar.total:
        bar.n = bar.total
        bar.refresh()
    bar.close()
    seconds = time.perf_counter() - start
    codes = [p.returncode for p in procs]
    rc = next((c for c in codes if c != 0), 0)
    mark = "done" if rc == 0 else f"FAILED (exit {rc})"
    print(f"   {name}: {mark} in {seconds:.1f} s, peak memory {peak / 2**30:.2f} GiB; "
          f"log{'s' if len(logs) > 1 else ''} {', '.join(map(str, logs))}", file=sys.stderr, flush=True)
    if timings is not None:
        _append_timing(timings, {"step": name, "seconds": round(seconds, 2), "peak_rss_gib": round(peak / 2**30, 3),
                                 "rc": rc, "log": [str(log) for log in logs]})
    for code, log in zip(codes, logs):
        if code != 0:
            lines = log.read_text(errors="replace").replace("\r", "\n").splitlines()
            print(f"   last lines of {log}:", file=sys.stderr)
            print("\n".join(f"   | {line}" for line in lines[-30:]), file=sys.stderr)
    return rc


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def progress_line(name: str, done: int, expected: int, elapsed: float) -> str:
    """`   stage 2: 120/4000 (3%), 1:05 elapsed, about 34:50 left` (no estimate before the first count)."""
    if expected <= 0:
        return f"   {name}: {_clock(elapsed)} elapsed"
    done = min(done, expected)
    left = f", about {_clock(elapsed * (expected - done) / done)} left" if done else ""
    return f"   {name}: {done}/{expected} ({100 * done // expected}%), {_clock(elapsed)} elapsed{left}"


def _append_timing(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(path.read_text()) if path.is_file() else []
    records = [r for r in records if r.get("step") != record["step"]]  # a re-run step replaces its old time
    records.append(record)
    path.write_text(json.dumps(records, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mgm.zoo.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("step", help="run one pipeline step quietly with a progress line, log and timing")
    s.add_argument("--name", required=True, help="step name shown and recorded")
    s.add_argument("--log", required=True, type=Path, action="append",
                   help="file that receives the command's output (one per command, in order)")
    s.add_argument("--timings", type=Path, default=None, help="JSON list the step's time and memory are added to")
    s.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar: auto = when stderr is a terminal (otherwise plain lines, see --line-every); "
                        "a terminal of zero width always gets the lines")
    s.add_argument("--line-every", type=float, default=30.0, metavar="SECONDS",
                   help="without a terminal (or on one of zero width), print a progress line this often (default 30)")
    s.add_argument("--count", default=None, metavar="REGEX",
                   help="progress = log lines matching REGEX out of --total (default: the command's tqdm counters)")
    s.add_argument("--total", type=int, default=None, help="expected number of --count lines per command")
    s.add_argument("cmd", nargs=argparse.REMAINDER,
                   help="-- COMMAND [ARGS...] [::: COMMAND2 [ARGS...] ...] (several run side by side)")
    m = sub.add_parser("summary", help="collect scores, losses and timings into summary.{md,json,png}")
    m.add_argument("--out", required=True, type=Path, help="pipeline output root (summary files go here)")
    m.add_argument("--data-root", required=True, type=Path, help="the eval data root (DATA/MGM-Eval)")
    m.add_argument("--work-dir", required=True, type=Path, help="WORK_DIR of the eval scripts (TextVQA answers)")
    m.add_argument("--run", action="append", required=True, type=Run.parse, metavar="LABEL:CKPT:TRAIN_DIR",
                   help="one trained variant (repeat; the first is compared with the second)")
    m.add_argument("--split", default="mmbench_dev_tiny", help="MMBench TSV stem (default mmbench_dev_tiny)")
    m.add_argument("--synth-meta", type=Path, default=None, help="synth_meta.json of the data (categories)")
    m.add_argument("--cli-answer", type=Path, default=None, help="the CLI's output (log) to quote")
    m.add_argument("--cli-questions", type=Path, default=None,
                   help="the questions piped into the CLI, one a line (pairs them with the answers)")
    m.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "step":
        cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
        commands: list[list[str]] = [[]]
        for word in cmd:
            if word == ":::":
                commands.append([])
            else:
                commands[-1].append(word)
        show = {"auto": None, "always": True, "never": False}[args.progress]
        return run_step(args.name, commands, args.log, args.timings, show, args.count, args.total, args.line_every)
    summary_path = args.out / "summary.md"
    write_summary(args.out, args.run, args.data_root, args.work_dir, args.split, args.synth_meta,
                  args.cli_answer, plot=not args.no_plot, cli_questions_path=args.cli_questions)
    print(summary_path.read_text())
    print(f"written: {summary_path}, {args.out / 'summary.json'}"
          + ("" if args.no_plot else f", {args.out / 'summary.png'}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
