"""What the demo's real scorers left behind, read back: TextVQA (m4c evaluator), MME (the kit's result
files), MMBench (the submission xlsx), the training loss curves, and the CLI transcript.

MMBench is scored by an official server in real life; here a prediction counts as correct when its
first option letter (or, failing that, its text equal to an option) is the answer's letter.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mgm.errors import UserError
from mgm.eval.mmbench_accuracy import option_letter as _mc_letter  # noqa: F401 (the demo's name)


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


def mmbench_scores(tsv: Path, xlsx: Path) -> dict[str, float]:
    """Accuracy (%) overall and per category of the submission xlsx written by convert_mmbench_for_submission."""
    from mgm.eval.mmbench_accuracy import mmbench_accuracy  # pandas: only when scoring

    scores = mmbench_accuracy(str(tsv), str(xlsx)) or {}
    return {k: 100.0 * correct / total for k, (correct, total) in scores.items()}


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
