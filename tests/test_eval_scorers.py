"""Benchmark scorers: hand-made answer files whose expected scores are worked out by hand from the
official rules (the arithmetic is written next to each expectation), plus the LLM judge client against
a tiny local OpenAI-format HTTP server."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mgm.errors import UserError
from mgm.eval import eval_mme, eval_pope, eval_science_qa, eval_textvqa, mathvista_utils, mmmu_utils
from mgm.eval.judge import JudgeClient, JudgeError, JudgeUnreachableError, resolve_judge_config
from mgm.eval.m4c_evaluator import EvalAIAnswerProcessor, TextVQAAccuracyEvaluator

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run a CLI as a user would, from the repository root."""
    env = dict(os.environ, PYTHONPATH="", NO_PROXY="127.0.0.1,localhost")
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)


# ----------------------------------------------------------------------------------- TextVQA
@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"),                    # number word -> digit
    ("The red car", "red car"),      # article dropped
    ("1,000", "1000"),               # every comma removed first
    ("Coca-Cola.", "coca cola"),     # '-' not next to a space -> space; final period removed
    ("hello - world", "hello world"),  # '-' next to a space -> deleted
    ("(B)", "b"),                    # brackets -> spaces
    ("Yes.", "yes"),
    ("it's", "it 's"),               # "'s" split off
    ("dont", "don't"),               # contraction table
    ("Im", "im"),                    # capitalised keys of the table never match after lowercasing
    ("1.5", "1.5"),                  # period followed by a digit is kept
    ("5.", "5"),                     # PARITY: the '(?!<=\\d)' typo is a lookahead, so this period goes
    ("a.b", "ab"),
    ("none", "0"),
])
def test_answer_normaliser(raw, expected):
    assert EvalAIAnswerProcessor()(raw) == expected


def test_period_strip_count_quirk():
    # PARITY: re.UNICODE (32) was passed as re.sub's count: only the first 32 periods are removed.
    raw = "a." * 40
    assert EvalAIAnswerProcessor()(raw) == "a" * 32 + "a." * 8


def test_soft_accuracy_leave_one_out():
    ev = TextVQAAccuracyEvaluator()
    scores = ev._compute_answer_scores(["coca cola", "Coca Cola"] + ["pepsi"] * 8)
    # "coca cola" given by 2 humans: the 2 subsets without one of them keep 1 match (1/3),
    # the 8 others keep 2 (2/3): (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    assert scores["coca cola"] == sum([1 / 3] * 2 + [2 / 3] * 8) / 10
    assert scores["coca cola"] == pytest.approx(0.6)
    # "pepsi" by 8: every subset keeps >= 7 matches -> min(1, 7/3) = 1.
    assert scores["pepsi"] == 1.0
    with pytest.raises(ValueError):
        ev._compute_answer_scores(["a"] * 9)


@pytest.fixture()
def textvqa_files(tmp_path):
    other = ["x"] * 10
    data = [
        {"image_id": "img1", "question": "What brand is it?", "answers": ["coca cola", "Coca Cola"] + ["pepsi"] * 8},
        {"image_id": "img2", "question": "How many cats?", "answers": ["2"] * 3 + ["3"] * 7},
        {"image_id": "img3", "question": "What is the price?", "answers": ["1000"] + ["thousand"] * 9},
        {"image_id": "img4", "question": "What does the sign say?", "answers": ["unanswerable"] * 10},
        {"image_id": "img5", "question": "What color is the car?", "answers": other},
    ]
    ann = tmp_path / "TextVQA_0.5.1_val.json"
    ann.write_text(json.dumps({"data": data}))
    suffix = "\nAnswer the question using a single word or phrase."
    answers = [
        # 3-line LLaVA OCR prompt: question on line 1
        {"question_id": "img1", "prompt": "What brand is it?\nReference OCR token: COCA, COLA" + suffix, "text": "Coca-Cola."},
        # 3-line prompt starting with the OCR tokens: question on line 2
        {"question_id": "img2", "prompt": "Reference OCR token: 2\nHow many cats?" + suffix, "text": "two"},
        {"question_id": "img3", "prompt": "What is the price?" + suffix, "text": "1,000"},
        {"question_id": "img4", "prompt": "OCR tokens: none Question: What does the sign say? Short answer:",
         "text": "Unanswerable."},
        {"question_id": "img5", "prompt": "What color is the car?" + suffix, "text": "red"},
    ]
    res = write_jsonl(tmp_path / "merge.jsonl", answers)
    return ann, res


def test_textvqa_cli(textvqa_files, capsys):
    ann, res = textvqa_files
    eval_textvqa.main(["--annotation-file", str(ann), "--result-file", str(res)])
    out = capsys.readouterr().out
    # img1 0.6 (2 matches); img2 "two"->"2" given by 3: (3 * 2/3 + 7 * 1) / 10 = 0.9;
    # img3 "1,000"->"1000" given by 1: (1 * 0 + 9 * 1/3) / 10 = 0.3; img4 1.0; img5 0.
    per_question = [sum([1 / 3] * 2 + [2 / 3] * 8) / 10, sum([2 / 3] * 3 + [1] * 7) / 10,
                    sum([0] + [1 / 3] * 9) / 10, 1.0, 0.0]
    expected = 100.0 * sum(per_question) / 5  # (0.6 + 0.9 + 0.3 + 1 + 0) / 5 = 56 %
    assert out == "merge\nSamples: 5\nAccuracy: {:.2f}%\n\n".format(expected)
    assert "Accuracy: 56.00%" in out


def test_textvqa_result_dir_and_errors(textvqa_files, tmp_path, capsys):
    ann, res = textvqa_files
    (tmp_path / "notes.txt").write_text("x")
    eval_textvqa.main(["--annotation-file", str(ann), "--result-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Skipping notes.txt" in out and "Skipping TextVQA_0.5.1_val.json" in out and "Accuracy: 56.00%" in out
    # An MMMU runner file given to the TextVQA scorer: the message names the file, line and key.
    wrong = write_jsonl(tmp_path / "mmmu.jsonl", [{"id": "validation_Art_1", "question_type": "multiple-choice",
                                                   "answer": "A", "parsed_pred": "A"}])
    with pytest.raises(SystemExit) as exc:
        eval_textvqa.main(["--annotation-file", str(ann), "--result-file", str(wrong)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mmmu.jsonl, line 1" in err and "'question_id'" in err


def test_textvqa_missing_file_subprocess(tmp_path):
    proc = run_cli("-m", "mgm.eval.eval_textvqa", "--annotation-file", str(tmp_path / "nope.json"),
                   "--result-file", str(tmp_path / "x.jsonl"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: annotation file not found: {tmp_path / 'nope.json'}"
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------- MME
@pytest.fixture()
def mme_root(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"
    existence = root / "existence"  # images and question files side by side
    existence.mkdir(parents=True)
    for stem, (q1, q2) in {"000": ("cat", "dog"), "001": ("car", "boat")}.items():
        (existence / f"{stem}.jpg").write_bytes(b"")
        (existence / f"{stem}.txt").write_text(
            f"Is there a {q1} in this image? Please answer yes or no.\tYes\n"
            f"Is there a {q2} in this image? Please answer yes or no.\tNo\n")
    artwork = root / "artwork"  # images/ + questions_answers_YN/
    (artwork / "images").mkdir(parents=True)
    (artwork / "questions_answers_YN").mkdir()
    (artwork / "images" / "10002.jpg").write_bytes(b"")
    # The second question uses the two-space variant present in some MME files.
    (artwork / "questions_answers_YN" / "10002.txt").write_text(
        "Is this artwork created by Monet? Please answer yes or no.\tYes\n"
        "Is this artwork created by Dali?  Please answer yes or no.\tNo\n")
    return root


def test_mme_convert_and_score(mme_root, tmp_path, capsys):
    s = "\nAnswer the question using a single word or phrase."
    answers = [
        {"question_id": "existence/000.jpg", "prompt": "Is there a cat in this image?" + s, "text": "Yes"},
        {"question_id": "existence/000.jpg", "prompt": "Is there a dog in this image? Please answer yes or no.",
         "text": "No, there is no dog."},
        {"question_id": "existence/001.jpg", "prompt": "Is there a car in this image?" + s, "text": "Not really"},
        {"question_id": "existence/001.jpg", "prompt": "Is there a boat in this image?" + s, "text": "no"},
        {"question_id": "artwork/images/10002.jpg", "prompt": "Is this artwork created by Monet?" + s,
         "text": "I think yes"},
        {"question_id": "artwork/10002.jpg", "prompt": "Is this artwork created by Dali?" + s, "text": "No\tnever"},
    ]
    ans = write_jsonl(tmp_path / "MGM-7B.jsonl", answers)
    out_dir = tmp_path / "results"
    scores = eval_mme.main(["--answers-file", str(ans), "--mme-root", str(mme_root), "--results-dir", str(out_dir)])
    printed = capsys.readouterr().out
    # existence: 000 both right (Yes/yes, "no, t"->no); 001: "not "->no vs Yes wrong, "no" right.
    #   acc = 3/4, acc_plus = 1/2 -> 0.75 * 100 + 0.5 * 100 = 125.0
    # artwork: "i th" has neither yes nor no -> other (wrong); "No never" right: acc = 1/2, acc_plus = 0 -> 50.0
    assert scores["Perception"]["tasks"] == {"existence": 125.0, "artwork": 50.0}
    assert scores["Perception"]["total"] == 175.0
    assert scores["Cognition"] == {"tasks": {}, "total": 0}
    assert printed == ("=========== Perception ===========\ntotal score: 175.0 \n\n"
                       "\t existence  score: 125.0\n\t artwork  score: 50.0\n\n\n"
                       "=========== Cognition ===========\ntotal score: 0 \n\n\n\n")
    lines = (out_dir / "artwork.txt").read_text().splitlines()
    assert lines == ["10002.txt\tIs this artwork created by Monet? Please answer yes or no.\tYes\tI think yes",
                     "10002.txt\tIs this artwork created by Dali?  Please answer yes or no.\tNo\tNo never"]
    # Scoring only, JSON output.
    eval_mme.main(["--results-dir", str(out_dir), "--json"])
    assert json.loads(capsys.readouterr().out)["Perception"]["total"] == 175.0


def test_mme_parse_rule_and_errors(mme_root, tmp_path, capsys):
    assert [eval_mme.parse_pred_ans(p) for p in ["yes", "no", "yes, it is", "nope", "maybe", "the answer is yes"]] == \
        ["yes", "no", "yes", "no", "other", "other"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question_id": "existence/000.jpg", "prompt": "Unknown?", "text": "y"}])
    with pytest.raises(SystemExit):
        eval_mme.main(["--answers-file", str(bad), "--mme-root", str(mme_root)])
    err = capsys.readouterr().err
    assert "bad.jsonl, record 1" in err and "no MME ground truth" in err


# -------------------------------------------------------------------------------------- POPE
def test_pope(tmp_path, capsys):
    ann_dir = tmp_path / "coco"
    ann_dir.mkdir()
    write_jsonl(ann_dir / "coco_pope_random.json", [{"label": x} for x in ["yes", "no", "yes", "no"]])
    write_jsonl(ann_dir / "coco_pope_popular.json", [{"label": x} for x in ["yes", "no"]])
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question_id": i, "category": c} for i, c in
                                                   enumerate(["random"] * 4 + ["popular"] * 2)])
    texts = ["Yes, there is a dog.", "No, it is not.", "There is not a cat", "Yes.",  # random
             "Yes", "no"]                                                            # popular
    result = write_jsonl(tmp_path / "a.jsonl", [{"question_id": i, "text": t} for i, t in enumerate(texts)])
    metrics = eval_pope.evaluate_pope(str(ann_dir), str(questions), str(result))
    out = capsys.readouterr().out
    # random: preds yes, no, no ("not"), yes vs labels yes, no, yes, no -> TP 1, TN 1, FN 1, FP 1
    r = metrics["random"]
    assert (r.tp, r.fp, r.tn, r.fn) == (1, 1, 1, 1)
    assert r.accuracy == 2 / 4 and r.precision == 1 / 2 and r.recall == 1 / 2 and r.f1 == 2 * 0.5 * 0.5 / 1.0
    assert r.yes_ratio == 2 / 4
    p = metrics["popular"]  # both right: TP 1, TN 1
    assert (p.tp, p.fp, p.tn, p.fn, p.accuracy, p.f1) == (1, 0, 1, 0, 1.0, 1.0)
    assert out.index("Category: popular, # samples: 2") < out.index("Category: random, # samples: 4")
    assert "TP\tFP\tTN\tFN\t\n1\t1\t1\t1\n" in out and "0.500, 0.500, 0.500, 0.500, 0.500" in out


# --------------------------------------------------------------------------------- ScienceQA
def test_science_qa(tmp_path, capsys):
    base = tmp_path / "sqa"
    base.mkdir()
    (base / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3", "4", "5"], "val": []}))
    problems = {pid: {"choices": ["x", "y", "z"], "answer": ans} for pid, ans in
                [("1", 0), ("2", 1), ("3", 2), ("4", 0), ("5", 1)]}
    (base / "problems.json").write_text(json.dumps(problems))
    answers = [
        {"question_id": "1", "prompt": "<image>\nQ1", "text": "A"},                        # exact letter: right
        {"question_id": "2", "prompt": "Q2", "text": "B. because y"},                      # "X. " prefix: right
        {"question_id": "3", "prompt": "<image>\nQ3", "text": "The answer is C. The answer is C."},  # 2 hits: FAILED
        {"question_id": "5", "prompt": "Q5", "text": "The answer is B!"},                  # one hit ('.' = any): right
    ]                                                                                       # pid 4 missing: FAILED
    res = write_jsonl(tmp_path / "a.jsonl", answers)
    out_file, out_result = tmp_path / "out.json", tmp_path / "res.json"
    eval_science_qa.main(["--base-dir", str(base), "--result-file", str(res), "--output-file", str(out_file),
                          "--output-result", str(out_result)])
    # 3 right of 5 = 60.00 %; images: pids 1 (right) and 3 (wrong) -> 50.00 %
    assert capsys.readouterr().out == "Total: 5, Correct: 3, Accuracy: 60.00%, IMG-Accuracy: 50.00%\n"
    result = json.loads(out_result.read_text())
    assert result["acc"] == 3 / 5 * 100 and result["correct"] == 3 and result["count"] == 5
    assert result["results"] == {"1": 0, "2": 1, "3": -1, "4": -1, "5": 1}
    assert json.loads(out_file.read_text())["incorrect"][0]["parsed_ans"] == "FAILED"


# -------------------------------------------------------------------------------------- MMMU
def test_mmmu_multi_choice_parsing():
    index2ans = {"A": "blue whale", "B": "shark", "C": "tuna", "D": "eel"}
    choices = ["A", "B", "C", "D"]
    parse = mmmu_utils.parse_multi_choice_response
    assert parse("(B)", choices, index2ans) == "B"
    assert parse("The answer is C.", choices, index2ans) == "C"            # " C " after stripping "."
    assert parse("Maybe (A), but finally (D)", choices, index2ans) == "D"  # several -> the last one
    assert parse("I am quite sure it is the blue whale here", choices, index2ans) == "A"  # > 5 words: option text
    rng = random.Random(42)
    expected = random.Random(42).choice(choices)  # no candidate -> seeded random choice
    assert parse("no idea", choices, index2ans, rng=rng) == expected
    assert len(mmmu_utils.CAT_SHORT2LONG) == 30 and sum(map(len, mmmu_utils.DOMAIN_CAT2SUB_CAT.values())) == 30


def test_mmmu_open_parsing_and_eval():
    # "the answer is 1,000 dollars": shortest tail after an indicator is "1,000 dollars"; numbers found:
    # "1,000" (comma pattern) and "000" (simple pattern, the "1" is followed by a comma).
    assert set(mmmu_utils.parse_open_response("The answer is 1,000 dollars.")) == {"1,000 dollars", 1000.0, 0.0}
    assert mmmu_utils.eval_open("1000", [1000.0, "x"]) is True
    assert mmmu_utils.eval_open("Paris", ["it is paris"]) is True
    assert mmmu_utils.eval_open(["7", "seven"], ["eight"]) is False
    assert mmmu_utils.normalize_str("a") == [" a", "a "] and mmmu_utils.normalize_str(" 3.14159 ") == [3.14]
    judge, metric = mmmu_utils.evaluate([
        {"id": "x1", "question_type": "multiple-choice", "answer": "A", "parsed_pred": "A"},
        {"id": "x2", "question_type": "multiple-choice", "answer": ["B", "C"], "parsed_pred": "C"},
        {"id": "x3", "question_type": "open", "answer": "2", "parsed_pred": [3.0]},
    ])
    assert judge == {"x1": "Correct", "x2": "Correct", "x3": "Wrong"} and metric == {"acc": 2 / 3}
    # Instance-weighted: (0.5 * 2 + 1.0 * 1) / 3
    assert mmmu_utils.calculate_ins_level_acc({"a": {"acc": 0.5, "num_example": 2},
                                               "b": {"acc": 1.0, "num_example": 1}}) == (0.5 * 2 + 1.0) / 3


def test_mmmu_clis(tmp_path, capsys):
    answer_dict = {
        "validation_Art_1": {"question_type": "multiple-choice", "ground_truth": "A"},
        "validation_Art_2": {"question_type": "multiple-choice", "ground_truth": "B"},
        "validation_Math_1": {"question_type": "open", "ground_truth": "3.5"},
        "validation_Math_2": {"question_type": "open", "ground_truth": "12"},
    }
    outputs = {"validation_Art_1": "A", "validation_Art_2": "C", "validation_Math_1": "The result is 3.50",
               "validation_Math_2": "twelve"}
    (tmp_path / "answer_dict_val.json").write_text(json.dumps(answer_dict))
    (tmp_path / "out.json").write_text(json.dumps(outputs))
    proc = run_cli("mgm/eval/MMMU/eval/main_eval_only.py", "--output_path", str(tmp_path / "out.json"),
                   "--answer_path", str(tmp_path / "answer_dict_val.json"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "Evaluating: Accounting" in lines and "Skipping Accounting for not found" in lines
    printed = eval(lines[-1])  # the upstream tool prints the dict itself  # noqa: S307
    # Art: 1 of 2; Math: "3.50" -> 3.5 matches, "twelve" does not -> 1 of 2; overall 2 of 4.
    assert printed["Art"] == {"num": 2, "acc": 0.5} and printed["Math"] == {"num": 2, "acc": 0.5}
    assert printed["Overall-Art and Design"] == {"num": 2, "acc": 0.5}
    assert printed["Overall-Business"] == {"num": 0, "acc": 0}
    assert printed["Overall"] == {"num": 4, "acc": 0.5}

    runner = write_jsonl(tmp_path / "merge.jsonl", [
        {"id": "validation_Art_1", "question_type": "multiple-choice", "answer": "A", "response": "A", "parsed_pred": "A"},
        {"id": "validation_Math_1", "question_type": "open", "answer": "3.5", "response": "3.5", "parsed_pred": [3.5]},
        {"id": "validation_Math_2", "question_type": "open", "answer": "12", "response": "x", "parsed_pred": ["x"]},
    ])
    from mgm.eval.MMMU.eval import convert_to_test, eval as mmmu_eval
    judged = mmmu_eval.main(["--result_file", str(runner), "--output_path", str(tmp_path / "sub" / "val.json")])
    assert judged["metric_dict"] == {"acc": 2 / 3, "num_example": 3}
    assert json.loads((tmp_path / "sub" / "val.json").read_text())["validation_Math_2"] == "Wrong"
    assert convert_to_test.main(["--result_file", str(runner), "--output_path", str(tmp_path / "test.json")]) == \
        {"validation_Art_1": "A", "validation_Math_1": "3.5", "validation_Math_2": "x"}
    capsys.readouterr()


# --------------------------------------------------------------------------------- MathVista
def test_mathvista_normalisation():
    norm = mathvista_utils.normalize_extracted_answer
    choices = ["3/11", "8/11", "6/11", "3/5"]
    assert norm("(B) 8/11", choices, "multi_choice", "text", None) == "8/11"   # "(X)" letter
    assert norm("C", choices, "multi_choice", "text", None) == "6/11"          # bare letter
    # edit distances of "8/12": 3/11 -> 2, 8/11 -> 1, 6/11 -> 2, 3/5 -> 3
    assert norm("8/12", choices, "multi_choice", "text", None) == "8/11"
    assert norm("c", choices, "multi_choice", "text", None) == "3/5"  # lowercase is not a letter: closest (distance 3, first)
    assert norm("3.0", None, "free_form", "integer", None) == "3"
    assert norm("abc", None, "free_form", "integer", None) is None
    assert norm("1.456", None, "free_form", "float", 2) == "1.46"
    assert norm("1.456", None, "free_form", "float", 1.0) is None  # PARITY: round(x, 1.0) raises
    assert norm([2007, 2008], None, "free_form", "list", None) == "[2007, 2008]"
    assert mathvista_utils.safe_equal("1.46", "1.46") and not mathvista_utils.safe_equal(None, "3")
    from mgm.eval.m4c_evaluator import levenshtein
    assert levenshtein("8/12", "3/5") == 3 and levenshtein("", "abc") == 3


def _mv_problem(pid, qtype, atype, answer, extraction=None, choices=None, precision=None, **meta):
    metadata = {"language": "english", "source": meta.get("source", "s1"), "category": "math-targeted-vqa",
                "task": "figure question answering", "context": "bar chart", "grade": "high school",
                "skills": meta.get("skills", ["arithmetic reasoning"])}
    problem = {"pid": pid, "question_type": qtype, "answer_type": atype, "answer": answer, "choices": choices,
               "precision": precision, "query": f"Question {pid}", "metadata": metadata,
               "response": meta.get("response", "")}
    if extraction is not None:
        problem["extraction"] = extraction
    return problem


def test_mathvista_calculate_score(tmp_path, capsys):
    problems = [
        _mv_problem("1", "multi_choice", "text", "8/11", "(B)", ["3/11", "8/11"], source="s1"),      # right
        _mv_problem("2", "multi_choice", "text", "3/11", "B", ["3/11", "8/11"], source="s2"),        # wrong
        _mv_problem("3", "free_form", "integer", "14", "14.0", source="s1", skills=["counting"]),   # right
        _mv_problem("4", "free_form", "float", "1.45", "1.449", precision=2, source="s1"),         # right
    ]
    merged = write_jsonl(tmp_path / "merge.jsonl", problems)
    raw = merged.read_text()
    score_file = tmp_path / "score.json"
    proc = run_cli("mgm/eval/MathVista/calculate_score.py", "--output_file", str(merged), "--score_file",
                   str(score_file), "--gt_file", str(tmp_path / "missing_testmini.json"))
    assert proc.returncode == 0, proc.stderr
    assert "Correct: 3, Total: 4, Accuracy: 75.0%" in proc.stdout  # str(round(3 / 4 * 100, 2))
    scores = json.loads(score_file.read_text())
    assert scores["average"] == {"accuracy": "75.0", "correct": 3, "total": 4}
    # per value: "%.2f" of the percentage, sorted by accuracy (descending)
    assert scores["question_type"] == {"free_form": {"accuracy": "100.00", "correct": 2, "total": 2},
                                       "multi_choice": {"accuracy": "50.00", "correct": 1, "total": 2}}
    assert list(scores["source"]) == ["s1", "s2"] and scores["source"]["s1"]["accuracy"] == "100.00"
    assert scores["skills"]["arithmetic reasoning"] == {"accuracy": "66.67", "correct": 2, "total": 3}
    # The results were written back as a JSON dict (as the original), the raw JSONL kept in .bak.
    assert (tmp_path / "merge.jsonl.bak").read_text() == raw
    saved = json.loads(merged.read_text())
    assert saved["4"]["prediction"] == "1.45" and saved["2"]["true_false"] is False


class _FakeOpenAIServer:
    """Minimal /v1/chat/completions server: answers with `reply`, or with queued (status, body) first."""

    def __init__(self):
        self.reply = "42"
        self.queue: list[tuple[int, dict]] = []
        self.prompts: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.prompts.append(body["messages"][0]["content"])
                if server.queue:
                    status, payload = server.queue.pop(0)
                else:
                    status, payload = 200, {
                        "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": f"  {server.reply} \n"}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def openai_server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "MGM_JUDGE_MODEL"):
        monkeypatch.delenv(var, raising=False)
    server = _FakeOpenAIServer()
    yield server
    server.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mathvista_extract_answer_cli(tmp_path, openai_server, capsys):
    from mgm.eval.MathVista import extract_answer as cli

    problems = [
        _mv_problem("1", "free_form", "integer", "0", response=""),                              # empty -> ""
        _mv_problem("2", "multi_choice", "text", "8/11", choices=["3/11", "8/11"], response="8/11"),  # a choice
        _mv_problem("3", "free_form", "integer", "12", response="12"),                           # int() parses
        _mv_problem("4", "free_form", "float", "1.5", precision=1, response="1.50"),             # float() -> "1.5"
        _mv_problem("5", "multi_choice", "text", "B", choices=["A", "B"], response='The answer is "B".'),
        _mv_problem("6", "free_form", "integer", "42", response="I count forty-two apples."),     # -> judge
    ]
    merged = write_jsonl(tmp_path / "merge.jsonl", problems)
    raw = merged.read_text()
    argv = ["--output_file", str(merged), "--quick_extract", "--api_base", openai_server.url, "--judge-model", "m"]
    cli.main(argv)
    results = json.loads(merged.read_text())
    assert [results[p]["extraction"] for p in "123456"] == ["", "8/11", "12", "1.5", "B", "42"]
    assert (tmp_path / "merge.jsonl.bak").read_text() == raw
    assert len(openai_server.prompts) == 1
    prompt = openai_server.prompts[0]
    assert prompt.startswith("Please read the following example.") and prompt.count("Extracted answer:") == 6
    assert prompt.endswith("Question 6\n\nI count forty-two apples.\n\nExtracted answer: ")
    # A rerun re-extracts everything; the judged prompt comes from the on-disk cache (no new request).
    cli.main(argv + ["--rerun"])
    assert len(openai_server.prompts) == 1 and json.loads(merged.read_text())["6"]["extraction"] == "42"
    assert (tmp_path / "merge.jsonl.bak").read_text() == raw  # the raw JSONL backup is not replaced
    capsys.readouterr()


def test_judge_client_retries_and_errors(openai_server):
    cfg = resolve_judge_config(openai_server.url, None, "m", backoff_s=0.0, max_retries=2)
    assert cfg.api_key == "EMPTY" and cfg.model == "m"
    openai_server.queue.append((500, {"error": {"message": "overloaded"}}))
    client = JudgeClient(cfg)
    assert client.complete("hi") == "42" and len(openai_server.prompts) == 2  # one retry after the 500
    openai_server.queue.append((401, {"error": {"message": "bad key"}}))
    with pytest.raises(JudgeError, match="HTTP 401: bad key"):
        client.complete("other prompt")
    assert len(openai_server.prompts) == 3  # no retry on 401


def test_judge_unreachable_names_url(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    client = JudgeClient(resolve_judge_config(url, "k", "m", backoff_s=0.0, max_retries=1))
    with pytest.raises(JudgeUnreachableError, match=f"cannot reach the judge endpoint {url}"):
        client.complete("hi")
    # Through the CLI: one line on stderr naming the URL, exit 2, the input kept.
    problems = [_mv_problem("1", "free_form", "integer", "3", response="three apples")]
    merged = write_jsonl(tmp_path / "merge.jsonl", problems)
    raw = merged.read_text()
    proc = run_cli("mgm/eval/MathVista/extract_answer.py", "--output_file", str(merged), "--api_base", url,
                   "--api_key", "k", "--max-retries", "0")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and url in proc.stderr and "Traceback" not in proc.stderr
    assert merged.read_text() == raw


def test_judge_needs_key_for_openai(monkeypatch):
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        resolve_judge_config()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("MGM_JUDGE_MODEL", "judge-1")
    cfg = resolve_judge_config()
    assert (cfg.base_url, cfg.api_key, cfg.model) == ("https://api.openai.com/v1", "sk-x", "judge-1")


# -------------------------------------------------------------------------------- converters
def test_mmbench_converter(tmp_path):
    pd = pytest.importorskip("pandas")
    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
               "l2-category", "comment", "split"]
    rows = [[i, f"q{i}", "h", "a", "b", "c", "d", "A", "cat", "img", "src", "l2", "", "dev"] for i in (10, 11, 12)]
    tsv = tmp_path / "mmbench_dev.tsv"
    pd.DataFrame(rows, columns=columns).to_csv(tsv, sep="\t", index=False)
    result_dir = tmp_path / "answers"
    (result_dir / "MGM").mkdir(parents=True)
    write_jsonl(result_dir / "MGM" / "MGM-7B.jsonl", [{"question_id": 10, "text": "A"}, {"question_id": 12, "text": "C"}])
    proc = run_cli("scripts/convert_mmbench_for_submission.py", "--annotation-file", str(tsv), "--result-dir",
                   str(result_dir), "--upload-dir", str(tmp_path / "upload"), "--experiment", "MGM/MGM-7B")
    assert proc.returncode == 0, proc.stderr
    out = pd.read_excel(tmp_path / "upload" / "MGM" / "MGM-7B.xlsx", engine="openpyxl")
    assert list(out.columns) == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert out["prediction"].tolist()[0] == "A" and out["prediction"].tolist()[2] == "C"
    assert pd.isna(out["prediction"].tolist()[1])
    assert "1 of 3 questions have no prediction" in proc.stderr


def _load_script(name: str):
    """The namespace of scripts/<name>.py (run_path: no __pycache__ left in scripts/)."""
    import runpy
    from types import SimpleNamespace

    return SimpleNamespace(**runpy.run_path(str(REPO / "scripts" / f"{name}.py"), run_name=name))


def test_mmvet_gqa_seed_converters(tmp_path, capsys):
    answers = write_jsonl(tmp_path / "merge.jsonl", [{"question_id": 1, "text": "Two cats."},
                                                    {"question_id": 2, "text": "A"}])
    assert _load_script("convert_mmvet_for_eval").main(["--src", str(answers), "--dst", str(tmp_path / "r/x/m.json")]) \
        == {"v1_1": "Two cats.", "v1_2": "A"}
    gqa = _load_script("convert_gqa_for_eval").main(["--src", str(answers), "--dst", str(tmp_path / "gqa.json")])
    assert gqa[0] == {"questionId": 1, "prediction": "two cats"}  # rstrip('.') then lower()
    seed = {"question_type": {"Scene": 1, "Count": 2},
            "questions": [{"question_id": "1", "question_type_id": 1, "data_type": "image", "answer": "A"},
                          {"question_id": "2", "question_type_id": 2, "data_type": "image", "answer": "B"}]}
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    seed_answers = write_jsonl(tmp_path / "seed.jsonl", [{"question_id": 1, "text": "A"},
                                                         {"question_id": 2, "text": "C"}])
    scores = _load_script("convert_seed_for_submission").main([
        "--annotation-file", str(tmp_path / "seed.json"), "--result-file", str(seed_answers),
        "--result-upload-file", str(tmp_path / "upload.jsonl")])
    out = capsys.readouterr().out
    # question 1 right ("A" == "A"), question 2 wrong ("C" != "B") -> 50 % overall and on images
    assert "Scene: 100.00%\nCount: 0.00%\nTotal accuracy: 50.00%\nimage accuracy: 50.00%\n" in out
    assert scores == {"total": 50.0, "image": 50.0, "video": None}
    assert (tmp_path / "upload.jsonl").read_text().splitlines()[0] == '{"question_id": "1", "prediction": "A"}'
    with pytest.raises(SystemExit) as exc:  # missing --src file: one-line error, exit 2
        _load_script("convert_gqa_for_eval").main(["--src", str(tmp_path / "none.jsonl"), "--dst", "x.json"])
    assert exc.value.code == 2
