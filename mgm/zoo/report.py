"""The demo's summary: `summary.md` (score table with chance levels and why a row may favour the LR-only
run, losses, trained checkpoint folders, wall time, the chat transcript), `summary.json` and
`summary.png` (loss curves of every run and per-category scores, matplotlib Agg).
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mgm.zoo.scores import Run, collect, format_transcript
from mgm.zoo.synth import COARSE, FINE

# Rows averaging the three coarse / the three fine categories (the headline of the ablation).
COARSE_MEAN, FINE_MEAN = f"coarse mean ({', '.join(COARSE)})", f"fine mean ({', '.join(FINE)})"
_CATEGORY_LABEL = {c: f"{c} ({'coarse' if c in COARSE else 'fine'})" for c in COARSE + FINE}
# Chance level (%) of each category for open answers: one over the size of its answer vocabulary.
OPEN_CHANCE = {"colour": 20.0, "shape": 100 / 3, "count": 100 / 3, "pattern": 100 / 3, "digit": 10.0, "mark": 25.0}
_CHANCE_BY_LABEL = {_CATEGORY_LABEL[c]: v for c, v in OPEN_CHANCE.items()}


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


_AHEAD_WHY = {
    "mme": ("yes/no questions at chance for both runs (random answers score about 75 of 200 per category, "
            "one fixed answer 50): they need comparing a value named in the question with the picture, which "
            "the tiny LLM does not learn in this budget, so the gap is noise"),
    "coarse": ("coarse facts, visible in the low-res view both runs see: either run may lead by a few "
               "questions (the README's three-seed spread is about 5-10 points)"),
    "chance": "fine details on which both runs are at about chance (TextVQA chance levels above)",
    "other": ("not explained by chance alone: which skill the tiny model picks up varies with the seed "
              "(compare seeds with `python benchmarks/bench_main_seeds.py`)"),
}


def lr_ahead_notes(scores: dict) -> list[str]:
    """Bullets for the score rows where the second run beats the first, grouped by why that is expected."""
    groups: dict[str, list[str]] = {}
    mme_rows = sum(1 for cat in ("color", "count", "existence", "OCR")
                   if any(r.get("mme", {}).get(cat) is not None for r in scores["runs"].values()))
    for bench, _, label, values in score_rows(scores):
        if len(values) != 2 or None in values or values[1] <= values[0]:
            continue
        if bench == "MME" and max(values) <= 100 * (mme_rows if label == "perception total" else 1):
            kind = "mme"
        elif "(coarse)" in label or label == COARSE_MEAN:
            kind = "coarse"
        elif bench == "TextVQA" and label in _CHANCE_BY_LABEL and max(values) < _CHANCE_BY_LABEL[label] + 10:
            kind = "chance"
        else:
            kind = "other"
        groups.setdefault(kind, []).append(f"{bench} {label} ({values[1]:.1f} vs {values[0]:.1f})")
    return [f"- {'; '.join(rows)}: {_AHEAD_WHY[kind]}." for kind, rows in groups.items()]


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
    ahead = lr_ahead_notes(scores)
    if ahead:
        lines += [f"Rows where {labels[1]} comes out ahead:", "", *ahead, ""]
    lines += ["## Training loss", "", "| run | stage | steps | first loss | last loss |", "|---|---|---:|---:|---:|"]
    for label in labels:
        for stage, curve in scores["runs"][label].get("loss", {}).items():
            if curve:
                last = [v for _, v in curve[-10:]]
                lines.append(f"| {label} | {stage} | {curve[-1][0]} | {curve[0][1]:.3f} | {sum(last) / len(last):.3f} |")
    lines += ["", "## Trained checkpoints", "", "| run | stage-2 checkpoint (load it, chat with it) |", "|---|---|"]
    for label in labels:
        folder = Path(scores["runs"][label].get("train_dir", "?")) / "stage2"
        lines.append(f"| {label} | `{folder}`: `mgm chat --model-path {folder} --image-file "
                     "mgm/serve/examples/tiny_demo.png` |")
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


def _loss_axis(ax, values: Sequence[float]) -> None:
    """Log scale with labelled ticks when the loss falls by more than 3x, else linear (a log axis over a
    narrow range shows one or two ticks)."""
    from matplotlib import ticker

    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 3:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def render_plot(scores: dict, path: Path) -> None:
    """Loss curves (stage 1, stage 2) of every run and per-category scores, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(scores["runs"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, stage in zip(axes[:2], ("stage1", "stage2")):
        seen: list[float] = []
        for i, label in enumerate(labels):
            curve = scores["runs"][label].get("loss", {}).get(stage)
            if curve:
                steps, values = zip(*curve)
                seen += values
                colour = f"C{i}"
                ax.plot(steps, values, color=colour, linewidth=0.6, alpha=0.25)
                ax.plot(steps, _smooth(values), color=colour, linewidth=1.6, label=f"{label} (smoothed)")
        ax.set_title(f"{stage.replace('stage', 'stage ')} training loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        _loss_axis(ax, seen)
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
    # Headroom above 100 % holds the legend, so it never covers a bar.
    ax.set_ylim(0, 122)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("TextVQA accuracy % (dotted: chance)")
    ax.set_title("per-category accuracy")
    ax.legend(loc="upper center", ncol=max(1, len(labels)), frameon=False)
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
