"""Helpers of the embedded demo pipeline (`scripts/tiny/run_all.sh`): run a step quietly, then summarise.

Two commands, both called by the shell script:

    python -m mgm.zoo.pipeline step --name "stage 2 (MGM)" --log OUT/logs/x.log --timings OUT/timings.json \\
        -- CMD [ARGS...]
    python -m mgm.zoo.pipeline summary --out OUT --data-root DATA/MGM-Eval --work-dir OUT \\
        --run MGM:CKPT:TRAIN_DIR --run LR-only:CKPT:TRAIN_DIR [--split mmbench_dev_tiny] [--cli-answer FILE]

`step` runs CMD with its output sent to the log file and shows ONE progress line instead: a bar driven
by the `n/total` counters the command's own tqdm bars write into the log (questions answered), by the
count of log lines matching `--count REGEX` out of `--total` (training steps), or a timer. Several
commands separated by `:::` (one `--log` each) run side by side under one bar. It records the wall time
and the peak memory of the whole process tree(s) (resident set size, sampled every 0.2 s) in the
timings file, and on failure prints the end of the failing log and exits with the command's status.

`summary` reads what the real scorers left behind (TextVQA answers + annotations through the m4c
evaluator, the MME kit's per-category result files, the MMBench submission xlsx), the training loss
curves (`trainer_state.json` log history) and the timings, and writes next to each other:
`OUT/summary.md` (printed too), `OUT/summary.json` and `OUT/summary.png` (loss curves of every run and
per-category scores, matplotlib Agg).

MMBench is scored by an official server in real life; here a prediction counts as correct when its
first option letter (or, failing that, its text equal to an option) is the answer's letter.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mgm.errors import UserError, exit_on_user_error
from mgm.zoo.synth import COARSE, FINE

_TQDM_COUNTER = re.compile(r"(\d+)/(\d+) \[")
# Rows averaging the three coarse / the three fine categories (the headline of the ablation).
COARSE_MEAN, FINE_MEAN = "mean of the coarse (coarse)", "mean of the fine (fine)"
_CATEGORY_LABEL = {c: f"{c} ({'coarse' if c in COARSE else 'fine'})" for c in COARSE + FINE}
# Chance level (%) of each category for open answers: one over the size of its answer vocabulary.
OPEN_CHANCE = {"colour": 20.0, "shape": 100 / 3, "count": 100 / 3, "pattern": 100 / 3, "digit": 10.0, "mark": 25.0}


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


def run_step(name: str, commands: Sequence[Sequence[str]], logs: Sequence[Path], timings: Path | None,
             show: bool | None = None, count: str | None = None, total: int | None = None) -> int:
    """Run the commands side by side, each with stdout+stderr to its log; one progress line on stderr.

    Returns the first non-zero exit status (0 when all succeed). Progress: with `count` (a regex) and
    `total` (per command), the log lines matching `count` (e.g. the Trainer's per-step `{'loss': ...}`
    records); otherwise the last tqdm `n/total` counter of each log, summed. The recorded peak memory is
    that of all the commands' process trees together.
    """
    from tqdm import tqdm

    if not commands or any(not c for c in commands):
        raise UserError("step: give each command after `--` (several are separated by `:::`)")
    if len(logs) != len(commands):
        raise UserError(f"step {name!r}: {len(commands)} command(s) but {len(logs)} --log file(s)")
    show = sys.stderr.isatty() if show is None else show
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
    while any(p.poll() is None for p in procs):
        time.sleep(0.5)
        if not show:
            continue
        counters = [w.progress() for w in watchers]
        n = sum(c[0] for c in counters if c)
        expected = (total or 0) * len(procs) if count_re is not None else sum(c[1] for c in counters if c)
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


def _append_timing(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(path.read_text()) if path.is_file() else []
    records = [r for r in records if r.get("step") != record["step"]]  # a re-run step replaces its old time
    records.append(record)
    path.write_text(json.dumps(records, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------- scores

@dataclass(frozen=True)
class Run:
    """One trained variant: a label for the table, its CKPT name in answer paths, its training output root."""

    label: str
    ckpt: str
    train_dir: Path

    @classmethod
    def parse(cls, text: str) -> "Run":
        parts = text.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise UserError(f"--run {text!r}: expected LABEL:CKPT:TRAIN_DIR")
        return cls(parts[0], parts[1], Path(parts[2]))


def textvqa_scores(data_root: Path, answers: Path, categories: dict[str, str]) -> dict[str, float]:
    """Soft VQA accuracy (%) overall and per category, with the scorer's own question recovery and evaluator."""
    from mgm.eval.eval_textvqa import load_annotations, prompt_processor
    from mgm.eval.m4c_evaluator import TextVQAAccuracyEvaluator
    from mgm.eval.scorer_io import read_jsonl

    annotations = load_annotations(str(data_root / "textvqa" / "TextVQA_0.5.1_val.json"))
    groups: dict[str, list[dict]] = {"all": []}
    for result in read_jsonl(str(answers), ("question_id", "prompt", "text")):
        ann = annotations[(result["question_id"], prompt_processor(result["prompt"]))]
        pred = {"pred_answer": result["text"], "gt_answers": ann["answers"]}
        groups["all"].append(pred)
        groups.setdefault(categories.get(str(result["question_id"]), "other"), []).append(pred)
    evaluator = TextVQAAccuracyEvaluator()
    return {k: 100.0 * evaluator.eval_pred_list(v) for k, v in groups.items() if v}


def mme_scores(results_dir: Path) -> dict[str, float]:
    """MME kit scores (0-200 per category: acc + acc+) of every category file, and the perception total."""
    from mgm.eval.eval_mme import calculate_mme_scores

    with contextlib.redirect_stderr(io.StringIO()):  # the kit notes every absent category; expected here
        scores = calculate_mme_scores(str(results_dir))
    out = dict(scores["Perception"]["tasks"])
    out["perception total"] = scores["Perception"]["total"]
    return out


def _mc_letter(prediction: object, options: dict[str, str]) -> str | None:
    text = "" if prediction is None or (isinstance(prediction, float) and math.isnan(prediction)) else str(prediction)
    text = text.strip()
    match = re.match(r"^\(?([A-D])(?:\b|\))", text)
    if match:
        return match.group(1)
    for letter, option in options.items():
        if text.lower().rstrip(".") == option.lower():
            return letter
    return None


def mmbench_scores(tsv: Path, xlsx: Path) -> dict[str, float]:
    """Accuracy (%) overall and per category of the submission xlsx written by convert_mmbench_for_submission."""
    import pandas as pd

    questions = pd.read_table(tsv)
    submitted = pd.read_excel(xlsx, engine="openpyxl")
    category = dict(zip(questions["index"], questions["category"]))
    groups: dict[str, list[bool]] = {"all": []}
    for _, row in submitted.iterrows():
        options = {k: str(row[k]) for k in "ABCD" if k in row and isinstance(row[k], str) and row[k]}
        ok = _mc_letter(row["prediction"], options) == row["answer"]
        groups["all"].append(ok)
        groups.setdefault(str(category.get(row["index"], "other")), []).append(ok)
    return {k: 100.0 * sum(v) / len(v) for k, v in groups.items() if v}


def loss_curves(train_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{stage: [(step, loss)]} from the `trainer_state.json` of train_dir/stage1 and train_dir/stage2."""
    curves = {}
    for stage in ("stage1", "stage2"):
        state = train_dir / stage / "trainer_state.json"
        if not state.is_file():
            continue
        history = json.loads(state.read_text()).get("log_history", [])
        curves[stage] = [(int(h["step"]), float(h["loss"])) for h in history if "loss" in h and "step" in h]
    return curves


def collect(runs: Sequence[Run], data_root: Path, work_dir: Path, split: str, synth_meta: dict) -> dict:
    """Every score and curve of every run, as one JSON-able dict."""
    tv_categories = synth_meta.get("categories", {}).get("textvqa", {})
    mme_to_ours = synth_meta.get("categories", {}).get("mme", {})
    out: dict = {"runs": {}, "mme_categories": mme_to_ours}
    for run in runs:
        entry: dict = {"ckpt": run.ckpt, "train_dir": str(run.train_dir)}
        answers = work_dir / "textvqa" / "answers" / run.ckpt / "merge.jsonl"
        if answers.is_file():
            entry["textvqa"] = textvqa_scores(data_root, answers, tv_categories)
        mme_dir = data_root / "MME" / "eval_tool" / "answers" / run.ckpt
        if mme_dir.is_dir():
            entry["mme"] = mme_scores(mme_dir)
        xlsx = data_root / "mmbench" / "answers_upload" / split / f"{run.ckpt}.xlsx"
        if xlsx.is_file():
            entry["mmbench"] = mmbench_scores(data_root / "mmbench" / f"{split}.tsv", xlsx)
        entry["loss"] = loss_curves(run.train_dir)
        out["runs"][run.label] = entry
    return out


def format_transcript(questions: Sequence[str], cli_output: str) -> str:
    """`USER: q` / `ASSISTANT: a` pairs from the questions piped into the CLI and its output (progress bars dropped)."""
    answers = [line.split("ASSISTANT:", 1)[1].strip() for line in cli_output.replace("\r", "\n").splitlines()
               if "ASSISTANT:" in line]
    lines = []
    for i, question in enumerate(questions):
        lines.append(f"USER: {question}")
        lines.append(f"ASSISTANT: {answers[i] if i < len(answers) else '(no answer)'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- report

def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def score_rows(scores: dict) -> list[tuple[str, str, str, list[float | None]]]:
    """(benchmark, metric, row label, [value per run]) in table order."""
    labels = list(scores["runs"])
    get = lambda bench, key: [scores["runs"][lab].get(bench, {}).get(key) for lab in labels]  # noqa: E731
    def group_mean(bench: str, group: Sequence[str]) -> list[float | None]:
        # Per run: the mean over the group's categories, when the run has a score for each of them.
        per_cat = [get(bench, c) for c in group]
        return [None if any(v[i] is None for v in per_cat) else sum(v[i] for v in per_cat) / len(group)
                for i in range(len(labels))]

    rows = []
    for key in ("all", *COARSE, *FINE):
        rows.append(("TextVQA", "accuracy %", "all" if key == "all" else _CATEGORY_LABEL[key], get("textvqa", key)))
    rows.append(("TextVQA", "accuracy %", COARSE_MEAN, group_mean("textvqa", COARSE)))
    rows.append(("TextVQA", "accuracy %", FINE_MEAN, group_mean("textvqa", FINE)))
    mme_map = scores.get("mme_categories", {})
    for mme_cat in ("color", "count", "existence", "OCR"):
        ours = mme_map.get(mme_cat)
        label = f"{mme_cat} = {_CATEGORY_LABEL[ours]}" if ours else mme_cat
        rows.append(("MME", "score /200", label, get("mme", mme_cat)))
    rows.append(("MME", "score", "perception total", get("mme", "perception total")))
    for key in ("all", *COARSE, *FINE):
        rows.append(("MMBench", "accuracy %", "all" if key == "all" else _CATEGORY_LABEL[key], get("mmbench", key)))
    rows.append(("MMBench", "accuracy %", COARSE_MEAN, group_mean("mmbench", COARSE)))
    rows.append(("MMBench", "accuracy %", FINE_MEAN, group_mean("mmbench", FINE)))
    return [r for r in rows if any(v is not None for v in r[3])]


def render_markdown(scores: dict, timings: list[dict], cli_answer: str | None, plot_name: str | None,
                    title: str = "MGM-Tiny: the embedded default, trained and evaluated on CPU") -> str:
    labels = list(scores["runs"])
    lines = [f"# {title}", ""]
    lines += ["## Scores", "",
              "| benchmark | metric | category | " + " | ".join(labels) + (" | Δ |" if len(labels) == 2 else " |"),
              "|---|---|---|" + "---:|" * len(labels) + ("---:|" if len(labels) == 2 else "")]
    for bench, metric, label, values in score_rows(scores):
        cells = [_fmt(v) for v in values]
        delta = ""
        if len(values) == 2:
            delta = " | " + (f"{values[0] - values[1]:+.1f}" if None not in values else "-")  # type: ignore[operator]
        lines.append(f"| {bench} | {metric} | {label} | " + " | ".join(cells) + delta + " |")
    lines += ["", "Chance: TextVQA (open answers) colour 20 %, shape, count, pattern 33 %, digit 10 %, mark 25 %; "
              "MME 75 per category when guessing at random (acc 50 + acc+ 25), 50 when always giving the same answer; MMBench 25 % (shape, count, pattern 33 %). Coarse = colour, shape, count (visible in the "
              "32 px low-res view); fine = the texture of the shapes, the halftone digit and mark (visible only in the "
              "128 px high-res view).", ""]
    lines += ["## Training loss", "", "| run | stage | steps | first loss | last loss |", "|---|---|---:|---:|---:|"]
    for label in labels:
        for stage, curve in scores["runs"][label].get("loss", {}).items():
            if curve:
                last = [v for _, v in curve[-10:]]
                lines.append(f"| {label} | {stage} | {curve[-1][0]} | {curve[0][1]:.3f} | {sum(last) / len(last):.3f} |")
    lines += ["", "## Wall time", "", "| step | seconds | peak memory (GiB) |", "|---|---:|---:|"]
    for t in timings:
        step = str(t["step"]).replace("|", "/")  # a pipe would split the table cell
        lines.append(f"| {step} | {t['seconds']:.1f} | {t.get('peak_rss_gib', 0):.2f} |")
    total, peak = _totals(timings)
    lines.append(f"| **total** | **{total:.1f}** ({total / 60:.1f} min) | **{peak:.2f}** |")
    if cli_answer is not None:
        lines += ["", "## Chat (python -m mgm.serve.cli)", "", "```", cli_answer.strip(), "```"]
    if plot_name:
        lines += ["", f"![loss curves and per-category scores]({plot_name})"]
    return "\n".join(lines) + "\n"


def _totals(timings: list[dict]) -> tuple[float, float]:
    """(seconds of all steps, largest peak memory in GiB) of the timing records."""
    return (sum(float(t["seconds"]) for t in timings),
            max((float(t.get("peak_rss_gib", 0)) for t in timings), default=0.0))


def _smooth(values: Sequence[float], span: int = 25) -> list[float]:
    """Exponential moving average (bias-corrected), so the trend shows through per-batch noise."""
    alpha, avg, out = 2 / (span + 1), 0.0, []
    for i, v in enumerate(values, start=1):
        avg = alpha * v + (1 - alpha) * avg
        out.append(avg / (1 - (1 - alpha) ** i))
    return out


def render_plot(scores: dict, path: Path) -> None:
    """Loss curves (stage 1, stage 2) of every run and per-category scores, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(scores["runs"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, stage in zip(axes[:2], ("stage1", "stage2")):
        for i, label in enumerate(labels):
            curve = scores["runs"][label].get("loss", {}).get(stage)
            if curve:
                steps, values = zip(*curve)
                colour = f"C{i}"
                ax.plot(steps, values, color=colour, linewidth=0.6, alpha=0.25)
                ax.plot(steps, _smooth(values), color=colour, linewidth=1.6, label=f"{label} (smoothed)")
        ax.set_title(f"{stage.replace('stage', 'stage ')} training loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.legend()
    ax = axes[2]
    cats = [*COARSE, *FINE]
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        # TextVQA-style open questions: one per image, every category in turn, a single-word answer.
        values = [scores["runs"][label].get("textvqa", {}).get(c, float("nan")) for c in cats]
        ax.bar([x + i * width for x in range(len(cats))], values, width, label=label)
    for x, c in enumerate(cats):
        ax.hlines(OPEN_CHANCE[c], x - width / 2, x + width * (len(labels) - 0.5), colors="k", linestyles="dotted")
    ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(cats))])
    ax.set_xticklabels([f"{c}\n({'coarse' if c in COARSE else 'fine'})" for c in cats])
    ax.set_ylim(0, 105)
    ax.set_ylabel("TextVQA accuracy % (dotted: chance)")
    ax.set_title("per-category accuracy")
    ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(out: Path, runs: Sequence[Run], data_root: Path, work_dir: Path, split: str,
                  synth_meta_path: Path | None, cli_answer_path: Path | None, plot: bool = True,
                  cli_questions_path: Path | None = None) -> dict:
    """Collect, render and write summary.{md,json,png} under `out`; returns the summary dict."""
    meta = json.loads(synth_meta_path.read_text()) if synth_meta_path and synth_meta_path.is_file() else {}
    scores = collect(runs, data_root, work_dir, split, meta)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else []
    cli_answer = cli_answer_path.read_text(errors="replace") if cli_answer_path and cli_answer_path.is_file() else None
    if cli_answer is not None and cli_questions_path is not None and cli_questions_path.is_file():
        questions = [q for q in cli_questions_path.read_text().splitlines() if q.strip()]
        cli_answer = format_transcript(questions, cli_answer)
    plot_name = None
    if plot:
        try:
            render_plot(scores, out / "summary.png")
            plot_name = "summary.png"
        except ImportError:
            print("note: matplotlib is not installed (pip install 'mgm[train]'); no plot written", file=sys.stderr)
    markdown = render_markdown(scores, timings, cli_answer, plot_name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(markdown)
    total, peak = _totals(timings)
    summary = {**scores, "timings": timings, "total_seconds": round(total, 1), "peak_rss_gib": peak,
               "cli_answer": cli_answer}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


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
                   help="progress bar: auto = when stderr is a terminal")
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
        return run_step(args.name, commands, args.log, args.timings, show, args.count, args.total)
    summary_path = args.out / "summary.md"
    write_summary(args.out, args.run, args.data_root, args.work_dir, args.split, args.synth_meta,
                  args.cli_answer, plot=not args.no_plot, cli_questions_path=args.cli_questions)
    print(summary_path.read_text())
    print(f"written: {summary_path}, {args.out / 'summary.json'}"
          + ("" if args.no_plot else f", {args.out / 'summary.png'}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
