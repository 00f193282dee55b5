"""The embedded default (issue "Main job"): synthetic data, pipeline helpers, and a shortened run of
scripts/tiny/run_all.sh that must end with a summary holding every expected row."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mgm.errors import UserError
from mgm.zoo import synth
from mgm.zoo.pipeline import run_step
from mgm.zoo.report import render_markdown, score_rows
from mgm.zoo.scores import Run, _mc_letter, format_transcript

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synth.build_synth_data(root, seed=3, n_train=40, n_pretrain=12, n_eval=12)
    return root


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "synth_meta.json"):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- synth

def test_synth_is_deterministic_and_seeded(small_data, tmp_path):
    again = tmp_path / "again"
    synth.build_synth_data(again, seed=3, n_train=40, n_pretrain=12, n_eval=12)
    assert _tree_digest(again) == _tree_digest(small_data)
    other = tmp_path / "other"
    synth.build_synth_data(other, seed=4, n_train=40, n_pretrain=12, n_eval=12)
    assert _tree_digest(other) != _tree_digest(small_data)


def test_fine_details_are_invisible_in_both_low_res_views_but_not_in_high_res():
    from mgm.data.image import ImageProcessor, image_to_tensors

    proc = ImageProcessor.for_image_size(32)
    proc.image_size_raw = dict(proc.crop_size)
    opts = synth.SynthOptions()
    base = synth.sample_scene(random.Random(0), opts)
    variants = [dataclasses.replace(base, pattern=p, digit=d, mark=m, digit_cell=dc, mark_cell=mc)
                for p, d, m, dc, mc in (("plain", "1", "dot", (0, 0), (0, 0)), ("striped", "8", "cross", (1, 0), (2, 1)),
                                        ("checkered", "0", "ring", (2, 0), (1, 2)))]
    mgm_lr, llava_lr, hr = [], [], []
    for scene in variants:
        image = synth.render_scene(scene, opts)
        lr, h = image_to_tensors(image, proc, aspect_ratio="pad", image_size_aux=128)
        mgm_lr.append(lr)
        hr.append(h)
        llava_lr.append(image_to_tensors(image, proc, aspect_ratio="pad", image_size_aux=None)[0])
    for i in (1, 2):
        # MGM's LR view (bilinear from HR, no antialias) is identical up to float rounding ...
        assert (mgm_lr[i] - mgm_lr[0]).abs().max() < 1e-5
        # ... LLaVA's 32 px bicubic resize differs by at most a few grey levels (normalised units) ...
        assert (llava_lr[i] - llava_lr[0]).abs().mean() < 0.01
        # ... while the HR view differs clearly.
        assert (hr[i] - hr[0]).abs().max() > 1.0
    coarse = dataclasses.replace(base, colour=next(c for c in synth.COLOURS if c != base.colour))
    lr_coarse, _ = image_to_tensors(synth.render_scene(coarse, opts), proc, aspect_ratio="pad", image_size_aux=128)
    assert (lr_coarse - mgm_lr[0]).abs().max() > 1.0  # coarse content is visible at low resolution


def test_training_files_layout(small_data):
    stage1 = json.loads((small_data / "stage1.json").read_text())
    stage2 = json.loads((small_data / "stage2.json").read_text())
    original = json.loads((small_data / "MGM-Finetune" / "mgm_instruction.json").read_text())
    assert len(stage1) == 12 and len(stage2) == 40 and len(original) == 40
    for sample in stage1 + stage2:
        if "image" in sample:
            assert (small_data / sample["image"]).is_file()
            assert sample["conversations"][0]["value"].startswith("<image>\n")
        turns = sample["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    for sample in original:
        if "image" in sample:
            assert (small_data / "MGM-Finetune" / sample["image"]).is_file()
    image_samples = [s for s in stage2 if "image" in s]
    assert any("image" not in s for s in stage2), "stage 2 mixes in text-only samples"
    assert all(len(s["conversations"]) == 6 for s in image_samples), "three turns per image sample"
    vocab = {a for c in synth.CATEGORIES for a in synth._choices(c)} | {"Yes", "No", "A", "B", "C", "D"}
    answers = {t["value"] for s in image_samples for t in s["conversations"] if t["from"] == "gpt"}
    assert answers <= vocab


def test_eval_sets_load_with_the_real_scorers(small_data):
    from mgm.eval.eval_mme import convert_answers_to_mme, load_mme_ground_truth
    from mgm.eval.eval_textvqa import load_annotations, prompt_processor
    from mgm.eval.scorer_io import read_jsonl

    ev = small_data / "MGM-Eval"
    meta = json.loads((small_data / "synth_meta.json").read_text())
    annotations = load_annotations(str(ev / "textvqa" / "TextVQA_0.5.1_val.json"))
    questions = list(read_jsonl(str(ev / "textvqa" / "llava_textvqa_val_v051_ocr.jsonl"), ("question_id", "text")))
    assert len(questions) == 12
    for q in questions:
        ann = annotations[(q["question_id"], prompt_processor(q["text"]))]
        assert len(ann["answers"]) == 10
        assert meta["categories"]["textvqa"][q["question_id"]] in synth.CATEGORIES
        assert (ev / "textvqa" / "train_images" / q["image"]).is_file()

    assert set(meta["categories"]["textvqa"].values()) == set(synth.CATEGORIES)  # every category in turn
    gt = load_mme_ground_truth(str(ev / "MME" / "MME_Benchmark_release_version"))
    mme = list(read_jsonl(str(ev / "MME" / "llava_mme.jsonl"), ("question_id", "text")))
    assert len(mme) == 24 and sorted(set(gt.values())) == ["No", "Yes"]
    fake = [{"question_id": q["question_id"], "prompt": q["text"], "text": "Yes"} for q in mme]
    rows = convert_answers_to_mme(fake, gt)  # every question resolves to its ground truth
    assert set(rows) == {"color", "count", "existence", "OCR"} and sum(len(r) for r in rows.values()) == 24

    import pandas as pd

    tsv = pd.read_table(ev / "mmbench" / "mmbench_dev_tiny.tsv")
    assert list(tsv.columns) == list(synth.MMBENCH_COLUMNS)
    assert set(tsv["category"]) == set(synth.CATEGORIES)
    three = tsv[tsv["category"] == "shape"].iloc[0]
    assert isinstance(three["C"], str) and pd.isna(three["D"])  # a 3-option question ends at C
    assert all(row["answer"] in "ABCD" and isinstance(row[row["answer"]], str) for _, row in tsv.iterrows())


def test_bundled_demo_image_matches_the_generator(tmp_path):
    bundled = REPO / "mgm" / "serve" / "examples" / "tiny_demo.png"
    assert bundled.read_bytes() == synth.write_demo_image(tmp_path / "demo.png").read_bytes()


def test_synth_rejects_bad_sizes(tmp_path):
    with pytest.raises(UserError, match="--image-size 96"):
        synth.build_synth_data(tmp_path, image_size=96)
    with pytest.raises(UserError, match="--n-eval"):
        synth.build_synth_data(tmp_path, n_eval=0)
    result = subprocess.run([sys.executable, "-m", "mgm.zoo.synth", "--out", str(tmp_path), "--turns", "9"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--turns" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------- pipeline

def test_run_step_logs_times_and_reports_failures(tmp_path, capsys):
    timings = tmp_path / "timings.json"
    rc = run_step("ok step", [[sys.executable, "-c", "print('hello')"]], [tmp_path / "ok.log"], timings, show=False)
    assert rc == 0 and (tmp_path / "ok.log").read_text().strip() == "hello"
    rc = run_step("pair", [[sys.executable, "-c", "print('a')"], [sys.executable, "-c", "import sys; print('boom'); "
                                                                   "sys.exit(3)"]],
                  [tmp_path / "a.log", tmp_path / "b.log"], timings, show=False)
    assert rc == 3 and (tmp_path / "a.log").read_text().strip() == "a"
    err = capsys.readouterr().err
    assert "pair: FAILED (exit 3)" in err and "| boom" in err and "| a" not in err
    records = json.loads(timings.read_text())
    assert [r["step"] for r in records] == ["ok step", "pair"] and records[0]["seconds"] > 0
    with pytest.raises(UserError, match="2 command"):
        run_step("x", [["true"], ["true"]], [tmp_path / "x.log"], None, show=False)


def test_run_step_prints_progress_lines_without_a_terminal(tmp_path, capsys):
    # A training-like command: one "{'loss': ...}" record per step, slower than the line interval.
    code = "import time\nfor i in range(4):\n    print({'loss': 1.0}, flush=True)\n    time.sleep(0.7)"
    rc = run_step("train", [[sys.executable, "-c", code]], [tmp_path / "t.log"], None, show=False,
                  count=r"\{'loss': ", total=4, line_every=0.6)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("   train: ") and "/4 (" in line]
    assert rc == 0 and len(lines) >= 2, lines
    done = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert done == sorted(done) and done[-1] >= 2 and "elapsed" in lines[-1]


def test_transcript_and_choice_parsing():
    log = "\rLoading weights: 100%|###| 144/144\nASSISTANT: blue\nASSISTANT: striped\nexit...\n"
    assert format_transcript(["What color?", "What pattern?", "What digit?"], log) == (
        "USER: What color?\nASSISTANT: blue\nUSER: What pattern?\nASSISTANT: striped\n"
        "USER: What digit?\nASSISTANT: (no answer)")
    options = {"A": "red", "B": "blue"}
    assert _mc_letter("B", options) == "B" and _mc_letter("(A) red", options) == "A"
    assert _mc_letter("blue.", options) == "B" and _mc_letter("green", options) is None
    assert _mc_letter(float("nan"), options) is None


def test_summary_markdown_has_every_row():
    runs = {"MGM (HR+LR)": {"textvqa": {"all": 70.0, "pattern": 90.0, "digit": 40.0, "mark": 80.0},
                            "mme": {"color": 190.0, "count": 150.0, "existence": 120.0, "OCR": 110.0,
                                    "perception total": 570.0},
                            "mmbench": {"all": 80.0, **{c: 80.0 for c in synth.CATEGORIES}},
                            "loss": {"stage1": [(1, 5.0), (2, 4.0)], "stage2": [(1, 3.0), (2, 1.0)]}},
            "LR-only": {"textvqa": {"all": 30.0, "pattern": 33.0, "digit": 10.0, "mark": 25.0}, "mmbench": {"all": 50.0}}}
    scores = {"runs": runs, "mme_categories": {"color": "colour", "count": "count", "existence": "shape", "OCR": "digit"}}
    md = render_markdown(scores, [{"step": "stage 1 (MGM)", "seconds": 12.5, "peak_rss_gib": 1.2}], "USER: hi", "summary.png")
    assert "| TextVQA | accuracy % | pattern (fine) | 90.0 | 33.0 | +57.0 |" in md
    assert "| MME | score /200 | OCR = digit (fine) | 110.0 | - | - |" in md
    assert "| MMBench | accuracy % | colour (coarse) | 80.0 | - | - |" in md
    assert "| **total** | **12.5** (0.2 min) | **1.20** |" in md and "USER: hi" in md
    assert "| TextVQA | accuracy % | fine mean (pattern, digit, mark) | 70.0 | 22.7 | +47.3 |" in md
    assert "| MMBench | accuracy % | coarse mean (colour, shape, count) | 80.0 | - | - |" in md
    # TextVQA: all, 3 fine, fine mean (no coarse scores: no coarse mean); MME 5; MMBench: all, 6, 2 means
    assert len(score_rows(scores)) == 5 + 5 + 9
    with pytest.raises(UserError, match="LABEL:CKPT:TRAIN_DIR"):
        Run.parse("no-colons")


def test_summary_explains_rows_the_lr_only_run_wins_and_names_the_checkpoints():
    runs = {"MGM (HR+LR)": {"train_dir": "/w/MGM", "textvqa": {"colour": 90.0, "mark": 20.0, "digit": 90.0},
                            "mme": {"color": 50.0, "OCR": 160.0}},
            "LR-only": {"train_dir": "/w/LR-only", "textvqa": {"colour": 95.0, "mark": 26.0, "digit": 10.0},
                        "mme": {"color": 65.0, "OCR": 170.0}}}
    md = render_markdown({"runs": runs}, [], None, None)
    notes = md.split("Rows where LR-only comes out ahead:")[1].split("## Training loss")[0]
    bullets = [line for line in notes.splitlines() if line.startswith("- ")]
    assert len(bullets) == 4 and "digit" not in notes  # MGM leads on the digit: no note
    assert any("MME color (65.0 vs 50.0)" in b and "yes/no questions at chance" in b for b in bullets)
    assert "TextVQA colour (coarse) (95.0 vs 90.0)" in notes and "low-res view" in notes
    assert "TextVQA mark (fine) (26.0 vs 20.0)" in notes
    assert any("MME OCR (170.0 vs 160.0)" in b and "seed" in b for b in bullets)  # far above chance
    assert "`mgm chat --model-path /w/MGM/stage2 " in md and "| LR-only | `/w/LR-only/stage2`" in md


# ----------------------------------------------------------------------------------------------- the script

@pytest.mark.slow
def test_run_all_quick_ends_with_the_summary(tmp_path):
    """QUICK=1: the whole pipeline (zoo, data, both stages of both variants, 3 benchmarks each, CLI, summary)
    with a handful of samples and steps; checks the summary files and their rows, not the scores."""
    out, data = tmp_path / "out", tmp_path / "data"
    env = {**os.environ, "QUICK": "1", "OUT": str(out), "DATA": str(data), "PYTHON": sys.executable,
           "PROGRESS": "never"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "tiny" / "run_all.sh")], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    md = (out / "summary.md").read_text()
    assert result.stdout.startswith(md)  # the table is printed at the end
    header = "| benchmark | metric | category | MGM (HR+LR) | LR-only | Δ |"
    assert header in md
    for row in ("| TextVQA | accuracy % | all |", "| TextVQA | accuracy % | digit (fine) |",
                "| MME | score /200 | color = colour (coarse) |", "| MME | score /200 | OCR = digit (fine) |",
                "| MME | score | perception total |", "| MMBench | accuracy % | all |",
                "| MMBench | accuracy % | shape (coarse) |", "| MMBench | accuracy % | mark (fine) |",
                "| MGM (HR+LR) | stage2 |", "| LR-only | stage1 |", "| stage 2 (MGM, LR-only) |", "| chat (CLI) |",
                "| **total** |", "USER: What digit is in the top left corner?"):
        assert row in md, row
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"MGM (HR+LR)", "LR-only"}
    assert all(run["loss"]["stage2"] for run in summary["runs"].values())
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "MGM" / "stage2" / "config.json").is_file()
    assert json.loads((out / "LR-only" / "stage2" / "config.json").read_text()).get("mm_vision_tower_aux") is None
    assert json.loads((out / "MGM" / "stage2" / "config.json").read_text())["image_size_aux"] == 128
