"""Seed spread of the embedded default: run `scripts/tiny/run_all.sh` for several seeds, report mean ± spread.

Run from the repository root (about 10 minutes per seed on a 2-core CPU):

    python benchmarks/bench_main_seeds.py [--seeds 0 1 2] [--out work_dirs/MGM-Tiny-seeds] [--reuse]

Each seed changes everything random: the tiny zoo (towers and LLM initialisation), the synthetic data
and the training order (`SEED=N`). For every score row of the summary (benchmark x category) it prints the
mean ± standard deviation over the seeds and the min..max range of MGM (HR+LR) and of the LR-only
ablation, then the MGM - LR-only margin per seed. The verdict line checks the issue's target on the
fine-detail rows: the mean margin is larger than the seed-to-seed spread (the larger standard deviation
of the two variants) and positive for every seed. Results go to OUT/seeds.md and OUT/seeds.json.

`--reuse` only aggregates the `summary.json` files already under OUT/seed<N>/ (no training). Other
environment variables (STEPS_MULT, N_TRAIN, ...) are passed to run_all.sh unchanged.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mgm.zoo.report import score_rows  # noqa: E402

MGM_LABEL, LR_LABEL = "MGM (HR+LR)", "LR-only"


def run_seed(seed: int, out: Path) -> float:
    """Run the whole pipeline for one seed into out/seed<N>; returns its wall time in seconds."""
    env = {**os.environ, "SEED": str(seed), "OUT": str(out / f"seed{seed}"), "RUN_NAME": f"MGM-Tiny-seed{seed}"}
    start = time.perf_counter()
    subprocess.run(["bash", str(REPO / "scripts" / "tiny" / "run_all.sh")], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def aggregate(summaries: dict[int, dict]) -> list[dict]:
    """One record per score row: per-variant stats over seeds and the per-seed margins."""
    rows: dict[tuple[str, str, str], dict] = {}
    for seed, summary in summaries.items():
        labels = list(summary["runs"])
        for bench, metric, label, values in score_rows(summary):
            rec = rows.setdefault((bench, metric, label), {"benchmark": bench, "metric": metric, "category": label,
                                                           "values": {lab: {} for lab in labels}})
            for lab, value in zip(labels, values):
                if value is not None:
                    rec["values"].setdefault(lab, {})[seed] = value
    out = []
    for rec in rows.values():
        vals = rec["values"]
        rec["stats"] = {lab: _stats(list(v.values())) for lab, v in vals.items() if v}
        if MGM_LABEL in vals and LR_LABEL in vals:
            seeds = sorted(set(vals[MGM_LABEL]) & set(vals[LR_LABEL]))
            rec["margins"] = {s: vals[MGM_LABEL][s] - vals[LR_LABEL][s] for s in seeds}
        out.append(rec)
    return out


def render(records: list[dict], seeds: Sequence[int], times: dict[int, float]) -> str:
    lines = [f"# MGM-Tiny over seeds {', '.join(map(str, seeds))}", "",
             "| benchmark | category | MGM (HR+LR) mean ± std [min..max] | LR-only mean ± std [min..max] | "
             "margin per seed | margin mean |", "|---|---|---|---|---|---:|"]

    def cell(rec: dict, lab: str) -> str:
        st = rec["stats"].get(lab)
        return "-" if st is None else f"{st['mean']:.1f} ± {st['std']:.1f} [{st['min']:.1f}..{st['max']:.1f}]"

    verdicts = []
    for rec in records:
        margins = rec.get("margins", {})
        per_seed = ", ".join(f"{m:+.1f}" for m in margins.values()) or "-"
        mean = statistics.fmean(margins.values()) if margins else None
        lines.append(f"| {rec['benchmark']} | {rec['category']} | {cell(rec, MGM_LABEL)} | {cell(rec, LR_LABEL)} | "
                     f"{per_seed} | {'-' if mean is None else f'{mean:+.1f}'} |")
        if "(fine)" in rec["category"] and margins and len(rec["stats"]) == 2:
            spread = max(rec["stats"][MGM_LABEL]["std"], rec["stats"][LR_LABEL]["std"])
            ok = mean is not None and mean > spread and min(margins.values()) > 0
            verdicts.append(f"- {rec['benchmark']} {rec['category']}: margin {mean:+.1f} vs spread {spread:.1f} "
                            f"-> {'OK' if ok else 'NOT MET'}")
    lines += ["", "Target (fine-detail rows): mean margin > seed spread (larger std of the two) and > 0 for every seed:",
              *verdicts]
    if times:
        lines += ["", "Wall time per seed: " + ", ".join(f"seed {s}: {t / 60:.1f} min" for s, t in times.items())]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run (default 0 1 2)")
    p.add_argument("--out", type=Path, default=REPO / "work_dirs" / "MGM-Tiny-seeds", help="output root")
    p.add_argument("--reuse", action="store_true", help="only aggregate existing OUT/seed<N>/summary.json files")
    args = p.parse_args(argv)
    times: dict[int, float] = {}
    summaries: dict[int, dict] = {}
    for seed in args.seeds:
        path = args.out / f"seed{seed}" / "summary.json"
        if not args.reuse:
            print(f"seed {seed}: running scripts/tiny/run_all.sh ...", file=sys.stderr, flush=True)
            times[seed] = run_seed(seed, args.out)
            print(f"seed {seed}: {times[seed] / 60:.1f} min", file=sys.stderr, flush=True)
        if not path.is_file():
            print(f"error: {path} not found (run without --reuse)", file=sys.stderr)
            return 2
        summaries[seed] = json.loads(path.read_text())
        if args.reuse:
            times[seed] = summaries[seed].get("total_seconds", 0.0)
    records = aggregate(summaries)
    text = render(records, args.seeds, times)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seeds.md").write_text(text)
    (args.out / "seeds.json").write_text(json.dumps({"seeds": args.seeds, "seconds": times, "rows": records},
                                                    indent=1, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
