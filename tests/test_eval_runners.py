"""End-to-end tests of the eval answer runners, the eval CLI/scripts and the tiny benchmarks (CPU, tiny model).

One tiny MGM checkpoint (MGM-Tiny-Vicuna) is loaded once and shared by every runner; the tiny
benchmarks are written in each benchmark's real file format; every runner's answers go through the
benchmark's scorer. Batched greedy answers must equal one-at-a-time answers, interrupted runs must
resume without duplicates, and bad inputs must stop with a message naming the file and line.
"""
from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mgm.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MAX_NEW = "4"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    from mgm.zoo.tiny import build_tiny_zoo

    return build_tiny_zoo(tmp_path_factory.mktemp("eval_zoo"), seed=0, families=["vicuna"])


@pytest.fixture(scope="session")
def model_path(zoo) -> str:
    return zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]


@pytest.fixture(scope="session")
def bench(tmp_path_factory) -> Path:
    from mgm.eval.tiny_benchmarks import build_tiny_benchmarks

    root = tmp_path_factory.mktemp("tiny_bench")
    build_tiny_benchmarks(root, seed=0)
    return root


@pytest.fixture(scope="session")
def model(model_path):
    from mgm.eval.runner import EvalModel

    return EvalModel.load(argparse.Namespace(model_path=model_path, device="cpu"))


def common(model_path: str, *extra: str) -> list[str]:
    return ["--model-path", model_path, "--conv-mode", "vicuna_v1", "--temperature", "0",
            "--max_new_tokens", MAX_NEW, "--no-progress", *extra]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_all(bench: Path, model_path: str, model, out: Path, batch_size: int) -> dict[str, Path]:
    """Run every runner on the tiny benchmarks; returns benchmark -> answers file."""
    from mgm.eval import model_math_vista, model_vqa, model_vqa_loader, model_vqa_mmbench, model_vqa_science
    from mgm.eval.MMMU.eval import run_llava

    bs = ["--batch-size", str(batch_size)]
    files = {k: out / f"{k}.jsonl" for k in ("textvqa", "mme", "pope", "mmvet", "mmbench", "sqa", "mathvista",
                                              "mmmu", "mmmu_test")}
    for name, folder, qfile, images in (("textvqa", "textvqa", "llava_textvqa_val_v051_ocr.jsonl", "train_images"),
                                        ("mme", "MME", "llava_mme.jsonl", "MME_Benchmark_release_version"),
                                        ("pope", "pope", "llava_pope_test.jsonl", "val2014")):
        model_vqa_loader.run(common(model_path, *bs, "--question-file", str(bench / folder / qfile),
                                    "--image-folder", str(bench / folder / images),
                                    "--answers-file", str(files[name])), model=model)
    model_vqa.run(common(model_path, *bs, "--question-file", str(bench / "mm-vet/llava-mm-vet.jsonl"),
                         "--image-folder", str(bench / "mm-vet/images"), "--answers-file", str(files["mmvet"])),
                  model=model)
    model_vqa_mmbench.run(common(model_path, *bs, "--question-file", str(bench / "mmbench/mmbench_dev_20230712.tsv"),
                                 "--answers-file", str(files["mmbench"]), "--all-rounds", "--single-pred-prompt"),
                          model=model)
    model_vqa_science.run(common(model_path, *bs, "--question-file", str(bench / "scienceqa/llava_test_CQM-A.json"),
                                 "--image-folder", str(bench / "scienceqa/images/test"),
                                 "--answers-file", str(files["sqa"]), "--single-pred-prompt"), model=model)
    model_math_vista.run(common(model_path, *bs, "--question-file", str(bench / "MathVista/testmini.json"),
                                "--image-folder", str(bench / "MathVista"), "--answers-file", str(files["mathvista"])),
                         model=model)
    for split, key in (("validation", "mmmu"), ("test", "mmmu_test")):
        run_llava.run(["--data_path", str(bench / "MMMU"), "--model_path", model_path, "--conv-mode", "vicuna_v1",
                       "--answers-file", str(files[key]), "--split", split, "--max_new_tokens", MAX_NEW,
                       "--no-progress", *bs], model=model)
    return files


@pytest.fixture(scope="session")
def answers(bench, model_path, model, tmp_path_factory) -> dict[str, Path]:
    return run_all(bench, model_path, model, tmp_path_factory.mktemp("answers_bs16"), batch_size=16)


# ----------------------------------------------------------------------------------- unit behaviour
def test_get_chunk_matches_original_slices_and_never_raises():
    from mgm.eval.runner import get_chunk

    items = list(range(10))
    assert [get_chunk(items, 3, k) for k in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # 4 chunks of ceil(10/4)=3 -> [0..2], [3..5], [6..8], [9] (original rule); 8 chunks over 3 items -> empties
    assert get_chunk(items, 4, 3) == [9]
    assert [get_chunk([1, 2, 3], 8, k) for k in range(8)] == [[1], [2], [3], [], [], [], [], []]
    assert get_chunk([], 2, 1) == []
    with pytest.raises(UserError, match="--chunk-idx"):
        get_chunk(items, 2, 2)
    with pytest.raises(UserError, match="--num-chunks"):
        get_chunk(items, 0, 0)


def test_load_8bit_flag_parses_strings_and_conv_switch_keeps_existing_templates(capsys):
    from mgm.eval.model_vqa_loader import build_parser
    from mgm.eval.runner import resolve_conv_mode

    assert build_parser().parse_args(["--load_8bit", "False"]).load_8bit is False
    assert build_parser().parse_args(["--load_8bit", "True"]).load_8bit is True
    assert build_parser().parse_args(["--load_8bit"]).load_8bit is True
    # `plain` + non-finetuned model: the original switched to the non-existent `plain_mmtag`.
    assert resolve_conv_mode("plain", "MGM-7B-pretrain") == "plain"
    assert "plain_mmtag" in capsys.readouterr().err
    assert resolve_conv_mode("plain", "MGM-7B-finetune") == "plain"
    # MMBench keys the switch on the model name; v1 -> v1_mmtag exists and is taken.
    assert resolve_conv_mode("v1", "llava-plain-7b", keyed_on="model") == "v1_mmtag"
    assert resolve_conv_mode("vicuna_v1", "MGM-7B-HD") == "vicuna_v1"
    with pytest.raises(UserError, match="unknown conversation template"):
        resolve_conv_mode("no_such_template", "MGM")


def test_math_vista_queries_use_the_exact_hints(bench):
    from mgm.eval.model_math_vista import create_one_query

    problems = json.loads((bench / "MathVista/testmini.json").read_text())
    q = {pid: create_one_query(p) for pid, p in problems.items()}
    assert q["1"] == ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at "
                      "the end.\nQuestion: Which shape is red?\nChoices:\n(A) circle\n(B) square\n(C) triangle\n"
                      "(D) star")
    assert q["2"] == ("Hint: Please answer the question requiring an integer answer and provide the final value, "
                      "e.g., 1, 2, 3, at the end.\nQuestion: How many shapes are there?")
    assert q["3"].startswith("Hint: Please answer the question requiring a floating-point number with one decimal "
                             "place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.\n")
    assert q["4"] == ("Hint: Please answer the question requiring a floating-point number with two decimal places "
                      "and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.\n"
                      "Question: How long is the bar? (Unit: cm)")
    assert q["5"].startswith("Hint: Please answer the question requiring a Python list as an answer and provide the "
                             "final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.\nQuestion: ")


def test_mmbench_options_hint_rounds_and_language(bench):
    from mgm.eval.model_vqa_mmbench import get_options, is_none, mmbench_items

    assert all(is_none(v) for v in (None, float("nan"), "nan", "NaN", "none", "None"))
    assert not is_none("no") and not is_none(0)
    assert get_options({"A": "x", "B": "nan", "C": "y"}) == ["x"]
    tsv = str(bench / "mmbench/mmbench_dev_20230712.tsv")
    items = mmbench_items(tsv, all_rounds=True, single_pred_prompt=True, lang="en")
    assert [it.key for it in items] == [(1000, 0), (1000, 1), (1000, 2), (1000, 3), (1001, 0), (1001, 1), (1001, 2),
                                        (1002, 0), (1002, 1), (1003, 0), (1003, 1)]
    first = items[0].make_record("A", "m")
    assert first["prompt"] == ("The picture shows a street sign.\nWhich option matches picture 0?\n"
                               "A. red\nB. blue\nC. green\nD. yellow")
    assert items[0].text == first["prompt"] + "\nAnswer with the option's letter from the given choices directly."
    second = items[1].make_record("A", "m")  # texts rotate, letters in the prompt stay A..D
    assert second["prompt"].endswith("A. blue\nB. green\nC. yellow\nD. red")
    assert second["options"] == ["blue", "green", "yellow", "red"] and second["option_char"] == ["B", "C", "D", "A"]
    no_hint = items[4].make_record("B", "m")
    assert no_hint["prompt"] == "Which option matches picture 1?\nA. a cat\nB. a dog\nC. a bird"
    assert items[7].make_record("A", "m")["options"] == ["stop", "go"]  # "none" ends the options
    cn = mmbench_items(tsv, all_rounds=False, single_pred_prompt=True, lang="cn")
    assert len(cn) == 4 and cn[0].text.endswith("\n请直接回答选项字母。")
    with pytest.raises(UserError, match="--lang"):
        mmbench_items(tsv, False, True, "fr")


def test_tiny_benchmarks_are_deterministic(tmp_path, bench):
    from mgm.eval.tiny_benchmarks import build_tiny_benchmarks

    manifest = build_tiny_benchmarks(tmp_path, seed=0)
    assert {k: v["questions"] for k, v in manifest["benchmarks"].items()} == {
        "textvqa": 8, "mme": 12, "mmbench": 4, "mmvet": 4, "mmmu": 9, "math_vista": 5, "scienceqa": 4, "pope": 6}
    for rel in ("textvqa/llava_textvqa_val_v051_ocr.jsonl", "MME/llava_mme.jsonl", "mmbench/mmbench_dev_20230712.tsv",
                "MathVista/images/3.png", "MMMU/Physics/validation.json"):
        assert (tmp_path / rel).read_bytes() == (bench / rel).read_bytes(), rel


# --------------------------------------------------------------------------- runners + scorers, e2e
VQA_KEYS = ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]


def test_vqa_runners_write_original_records_and_textvqa_mme_pope_score(answers, bench, capsys):
    from mgm.eval import eval_mme, eval_pope, eval_textvqa

    for name, n in (("textvqa", 8), ("mme", 12), ("pope", 6), ("mmvet", 4)):
        records = read_jsonl(answers[name])
        assert len(records) == n and all(list(r) == VQA_KEYS for r in records), name
        assert all(r["model_id"] == "MGM-Tiny-Vicuna" and r["metadata"] == {} for r in records)
    # Final order = question-file order (MME pairs and POPE rely on it).
    questions = read_jsonl(bench / "MME/llava_mme.jsonl")
    assert [(r["question_id"], r["prompt"]) for r in read_jsonl(answers["mme"])] == \
        [(q["question_id"], q["text"]) for q in questions]
    capsys.readouterr()
    eval_textvqa.main(["--annotation-file", str(bench / "textvqa/TextVQA_0.5.1_val.json"),
                       "--result-file", str(answers["textvqa"])])
    assert "Samples: 8\nAccuracy: " in capsys.readouterr().out
    scores = eval_mme.main(["--answers-file", str(answers["mme"]), "--mme-root",
                            str(bench / "MME/MME_Benchmark_release_version"), "--json"])
    assert set(scores["Perception"]["tasks"]) == {"existence", "artwork"}
    assert set(scores["Cognition"]["tasks"]) == {"code_reasoning"}
    metrics = eval_pope.evaluate_pope(str(bench / "pope/coco"), str(bench / "pope/llava_pope_test.jsonl"),
                                      str(answers["pope"]))
    assert set(metrics) == {"adversarial", "popular", "random"}


def test_mmvet_and_mmbench_converters_read_the_answers(answers, bench, tmp_path):
    import pandas as pd

    dst = tmp_path / "mmvet.json"
    subprocess.run([sys.executable, str(REPO / "scripts/convert_mmvet_for_eval.py"), "--src", str(answers["mmvet"]),
                    "--dst", str(dst)], check=True, capture_output=True)
    assert sorted(json.loads(dst.read_text())) == ["v1_0", "v1_1", "v1_2", "v1_3"]

    records = read_jsonl(answers["mmbench"])
    assert len(records) == 11
    assert all(list(r) == ["question_id", "round_id", "prompt", "text", "options", "option_char", "answer_id",
                           "model_id", "metadata"] for r in records)
    assert all(isinstance(r["question_id"], int) for r in records)
    result_dir = tmp_path / "mmbench_answers"
    result_dir.mkdir()
    shutil.copy(answers["mmbench"], result_dir / "exp.jsonl")
    subprocess.run([sys.executable, str(REPO / "scripts/convert_mmbench_for_submission.py"), "--annotation-file",
                    str(bench / "mmbench/mmbench_dev_20230712.tsv"), "--result-dir", str(result_dir),
                    "--upload-dir", str(tmp_path / "upload"), "--experiment", "exp"], check=True, capture_output=True)
    frame = pd.read_excel(tmp_path / "upload/exp.xlsx")
    assert list(frame["index"]) == [1000, 1001, 1002, 1003] and "prediction" in frame.columns


def test_science_runner_mixes_text_only_and_scores(answers, bench, tmp_path, capsys):
    from mgm.eval import eval_science_qa

    records = {r["question_id"]: r for r in read_jsonl(answers["sqa"])}
    assert list(records) == ["100", "101", "102", "103"]
    assert records["100"]["prompt"].startswith("<image>\nContext: A compass.")
    assert records["102"]["prompt"].startswith("Context: A compass.")  # text-only question: no image tag
    assert all(r["prompt"].endswith("\nAnswer with the option's letter from the given choices directly.")
               for r in records.values())
    capsys.readouterr()
    eval_science_qa.main(["--base-dir", str(bench / "scienceqa"), "--result-file", str(answers["sqa"]),
                          "--output-file", str(tmp_path / "o.json"), "--output-result", str(tmp_path / "r.json")])
    assert capsys.readouterr().out.startswith("Total: 4, Correct: ")
    assert json.loads((tmp_path / "r.json").read_text())["count"] == 4


class _FakeJudge(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible /chat/completions endpoint that always extracts "B"."""

    def do_POST(self):  # noqa: N802 (http.server API)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "judge",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": "B"}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_math_vista_runner_extract_and_score_with_a_judge(answers, bench, tmp_path, capsys):
    from mgm.eval.MathVista import calculate_score, extract_answer

    records = read_jsonl(answers["mathvista"])
    assert [r["pid"] for r in records] == ["1", "2", "3", "4", "5"]
    problems = json.loads((bench / "MathVista/testmini.json").read_text())
    for r in records:  # the problem dict with query and response (query replaced in place)
        assert list(r) == list(problems[r["pid"]]) + ["response"]
        assert r["query"].startswith("Hint: ")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        merged = tmp_path / "merge.jsonl"
        shutil.copy(answers["mathvista"], merged)
        extract_answer.main(["--output_file", str(merged), "--api_base", f"http://127.0.0.1:{server.server_port}/v1",
                             "--api_key", "x", "--llm_engine", "judge"])
    finally:
        server.shutdown()
    scores = calculate_score.main(["--output_file", str(merged), "--score_file", str(tmp_path / "score.jsonl"),
                                   "--gt_file", str(bench / "MathVista/testmini.json")])
    assert scores["average"]["total"] == 5
    assert json.loads((tmp_path / "score.jsonl").read_text())["average"]["total"] == 5


def test_mmmu_runner_reads_parquet_and_json_layouts_and_scores(answers, bench, tmp_path, capsys):
    from mgm.eval.mmmu_utils import convert_to_test, eval_result_file

    records = read_jsonl(answers["mmmu"])
    assert [r["id"] for r in records] == [f"validation_{s}_{n}" for s in ("Art", "Math", "Physics") for n in (1, 2, 3)]
    for r in records:
        expected = ["id", "question_type", "answer", "response", "parsed_pred"]
        assert list(r) == expected + (["index2ans"] if r["question_type"] == "multiple-choice" else [])
    # Physics_2 has two option images: no model call, a seeded random letter (the original crashed here).
    multi = next(r for r in records if r["id"] == "validation_Physics_2")
    assert multi["response"] in ("A", "B") and multi["parsed_pred"] == multi["response"]
    result = eval_result_file(["--result_file", str(answers["mmmu"]), "--output_path", str(tmp_path / "val.json")])
    assert result["metric_dict"]["num_example"] == 9
    assert sum(result[r["id"]] == "Correct" for r in records) == round(result["metric_dict"]["acc"] * 9)
    assert json.loads((tmp_path / "val.json").read_text())["metric_dict"]["num_example"] == 9
    convert_to_test(["--result_file", str(answers["mmmu_test"]), "--output_path", str(tmp_path / "test.json")])
    assert len(json.loads((tmp_path / "test.json").read_text())) == 9


def test_batched_answers_equal_unbatched(answers, bench, model_path, model, tmp_path):
    from mgm.eval import model_vqa_loader, model_vqa_mmbench, model_vqa_science
    from mgm.eval.MMMU.eval import run_llava

    one = {k: tmp_path / f"{k}.jsonl" for k in ("mme", "mmbench", "sqa", "mmmu")}
    bs1 = ["--batch-size", "1"]
    model_vqa_loader.run(common(model_path, *bs1, "--question-file", str(bench / "MME/llava_mme.jsonl"),
                                "--image-folder", str(bench / "MME/MME_Benchmark_release_version"),
                                "--answers-file", str(one["mme"])), model=model)
    model_vqa_mmbench.run(common(model_path, *bs1, "--question-file", str(bench / "mmbench/mmbench_dev_20230712.tsv"),
                                 "--answers-file", str(one["mmbench"]), "--all-rounds", "--single-pred-prompt"),
                          model=model)
    model_vqa_science.run(common(model_path, *bs1, "--question-file", str(bench / "scienceqa/llava_test_CQM-A.json"),
                                 "--image-folder", str(bench / "scienceqa/images/test"),
                                 "--answers-file", str(one["sqa"]), "--single-pred-prompt"), model=model)
    run_llava.run(["--data_path", str(bench / "MMMU"), "--model_path", model_path, "--conv-mode", "vicuna_v1",
                   "--answers-file", str(one["mmmu"]), "--max_new_tokens", MAX_NEW, "--no-progress", *bs1], model=model)
    for name, field in (("mme", "text"), ("mmbench", "text"), ("sqa", "text"), ("mmmu", "response")):
        batched = [r[field] for r in read_jsonl(answers[name])]
        single = [r[field] for r in read_jsonl(one[name])]
        assert batched == single, name
    assert len(set(r["text"] for r in read_jsonl(one["mme"]))) > 1  # the answers do depend on the input


def test_hd_model_batched_equals_unbatched(zoo, bench, tmp_path):
    from mgm.eval import model_vqa_loader
    from mgm.eval.runner import EvalModel

    path = zoo["checkpoints"]["MGM-Tiny-Vicuna-HD"]["path"]
    hd = EvalModel.load(argparse.Namespace(model_path=path, device="cpu"))
    texts = {}
    for bs in ("1", "6"):
        out = tmp_path / f"pope_{bs}.jsonl"
        model_vqa_loader.run(common(path, "--batch-size", bs,
                                    "--question-file", str(bench / "pope/llava_pope_test.jsonl"),
                                    "--image-folder", str(bench / "pope/val2014"), "--answers-file", str(out)),
                             model=hd)
        texts[bs] = [r["text"] for r in read_jsonl(out)]
    assert texts["1"] == texts["6"] and len(texts["1"]) == 6


# ----------------------------------------------------------------------------------------- resume
def _textvqa_args(bench, model_path, out, *extra):
    return common(model_path, "--question-file", str(bench / "textvqa/llava_textvqa_val_v051_ocr.jsonl"),
                  "--image-folder", str(bench / "textvqa/train_images"), "--answers-file", str(out), *extra)


def test_resume_after_limit_and_after_a_kill_mid_write(answers, bench, model_path, model, tmp_path):
    from mgm.eval import model_vqa_loader
    from mgm.eval.runner import EvalModel

    out = tmp_path / "textvqa.jsonl"
    first = model_vqa_loader.run(_textvqa_args(bench, model_path, out, "--limit", "3"), model=model)
    assert (first.written, first.complete) == (3, False)
    kept = {r["answer_id"] for r in read_jsonl(out)}
    second = model_vqa_loader.run(_textvqa_args(bench, model_path, out), model=model)
    assert (second.resumed, second.written, second.complete) == (3, 5, True)
    records = read_jsonl(out)
    assert kept <= {r["answer_id"] for r in records}  # the first 3 answers were kept, not regenerated
    assert [(r["question_id"], r["prompt"]) for r in records] == \
        [(r["question_id"], r["prompt"]) for r in read_jsonl(answers["textvqa"])]
    assert [r["text"] for r in records] == [r["text"] for r in read_jsonl(answers["textvqa"])]

    # A kill while writing: the last line is cut in half and a few answers are missing.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    third = model_vqa_loader.run(_textvqa_args(bench, model_path, out), model=model)
    assert (third.resumed, third.written) == (4, 4)
    records = read_jsonl(out)
    assert len(records) == 8 and len({(r["question_id"], r["prompt"]) for r in records}) == 8

    # Complete file: nothing to do, and the model is never loaded.
    def refuse():
        raise AssertionError("the model must not load when every answer exists")

    idle = model_vqa_loader.run(_textvqa_args(bench, model_path, out),
                                model=EvalModel("MGM-Tiny-Vicuna", loader=refuse))
    assert (idle.resumed, idle.written, idle.complete) == (8, 0, True)


def test_shards_cover_every_question_once(bench, model_path, model, tmp_path):
    from mgm.eval import model_vqa_loader

    parts = []
    for k in range(3):
        part = tmp_path / f"3_{k}.jsonl"
        model_vqa_loader.run(_textvqa_args(bench, model_path, part, "--num-chunks", "3", "--chunk-idx", str(k)),
                             model=model)
        parts.extend(read_jsonl(part))
    questions = read_jsonl(bench / "textvqa/llava_textvqa_val_v051_ocr.jsonl")
    assert [(r["question_id"], r["prompt"]) for r in parts] == [(q["question_id"], q["text"]) for q in questions]
    with pytest.raises(UserError, match="another shard"):
        model_vqa_loader.run(_textvqa_args(bench, model_path, tmp_path / "3_0.jsonl", "--num-chunks", "3",
                                           "--chunk-idx", "1"), model=model)


# -------------------------------------------------------------------------------------- bad input
def test_wrong_format_question_files_name_file_and_line(bench, model_path, model, tmp_path):
    from mgm.eval import model_math_vista, model_vqa_loader, model_vqa_mmbench, model_vqa_science

    out = str(tmp_path / "a.jsonl")
    tsv = str(bench / "mmbench/mmbench_dev_20230712.tsv")
    with pytest.raises(UserError, match=rf"question file {tsv}, line 1: not a JSON object per line"):
        model_vqa_loader.run(common(model_path, "--question-file", tsv, "--answers-file", out), model=model)
    sqa = str(bench / "scienceqa/llava_test_CQM-A.json")
    with pytest.raises(UserError, match=rf"question file {sqa}, line 1"):
        model_vqa_loader.run(common(model_path, "--question-file", sqa, "--answers-file", out), model=model)
    no_image = tmp_path / "q.jsonl"
    no_image.write_text('{"question_id": 1, "image": "a.jpg", "text": "q"}\n{"question_id": 2, "text": "q"}\n')
    with pytest.raises(UserError, match=rf"{no_image}, line 2: missing key 'image'"):
        model_vqa_loader.run(common(model_path, "--question-file", str(no_image), "--answers-file", out), model=model)
    jsonl = str(bench / "MME/llava_mme.jsonl")
    with pytest.raises(UserError, match=r"lacks the column\(s\) index, question, image, A, B"):
        model_vqa_mmbench.run(common(model_path, "--question-file", jsonl, "--answers-file", out), model=model)
    with pytest.raises(UserError, match=rf"question file {jsonl} is not JSON"):
        model_math_vista.run(common(model_path, "--question-file", jsonl, "--answers-file", out), model=model)
    mathvista = str(bench / "MathVista/testmini.json")
    with pytest.raises(UserError, match="expected a JSON list"):
        model_vqa_science.run(common(model_path, "--question-file", mathvista, "--answers-file", out), model=model)
    assert not os.path.exists(out) or not Path(out).read_text()


def test_missing_image_names_file_and_line_and_keeps_other_answers(bench, model_path, model, tmp_path, capsys):
    from mgm.eval import model_vqa_loader

    images = tmp_path / "images"
    shutil.copytree(bench / "textvqa/train_images", images)
    qfile = tmp_path / "questions.jsonl"
    lines = (bench / "textvqa/llava_textvqa_val_v051_ocr.jsonl").read_text().splitlines()
    broken = json.loads(lines[5])
    missing = broken["image"]
    (images / missing).unlink()
    qfile.write_text("\n".join(lines) + "\n")
    out = tmp_path / "answers.jsonl"
    args = common(model_path, "--question-file", str(qfile), "--image-folder", str(images), "--answers-file", str(out))
    with pytest.raises(UserError, match=r"question\(s\) failed"):
        model_vqa_loader.run(args, model=model)
    failing_lines = [n + 1 for n, line in enumerate(lines) if json.loads(line)["image"] == missing]
    assert len(read_jsonl(out)) == 8 - len(failing_lines)  # the other answers are written
    # The CLI entry prints one line per failure naming the question file, line and image; exit status 2.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        model_vqa_loader.main(args, model=model)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    for n in failing_lines:
        assert f"error: question file {qfile}, line {n}: image file {images / missing} does not exist" in err
    assert "Traceback" not in err
    shutil.copy(bench / "textvqa/train_images" / missing, images / missing)
    fixed = model_vqa_loader.run(args, model=model)
    assert (fixed.written, fixed.complete) == (len(failing_lines), True)


def test_answers_file_of_another_benchmark_or_model_is_refused(answers, bench, model_path, model, tmp_path):
    from mgm.eval import model_vqa_loader, model_vqa_mmbench
    from mgm.eval.runner import EvalModel

    mme = ["--question-file", str(bench / "MME/llava_mme.jsonl"),
           "--image-folder", str(bench / "MME/MME_Benchmark_release_version")]
    for source, pattern in ((answers["textvqa"], r"line 1: question .* is not in --question-file"),
                            (answers["mmbench"], r"line 1 holds an MMBench answer"),
                            (answers["mathvista"], r"line 1 holds a MathVista answer"),
                            (answers["mmmu"], r"line 1 holds an MMMU answer")):
        target = tmp_path / f"{Path(source).stem}.jsonl"
        shutil.copy(source, target)
        before = target.read_bytes()
        with pytest.raises(UserError, match=pattern):
            model_vqa_loader.run(common(model_path, *mme, "--answers-file", str(target)), model=model)
        assert target.read_bytes() == before  # nothing lost
    target = tmp_path / "mme_other_model.jsonl"
    shutil.copy(answers["mme"], target)
    with pytest.raises(UserError, match="answer of model 'MGM-Tiny-Vicuna', but this run uses 'Other'"):
        model_vqa_loader.run(common(model_path, *mme, "--answers-file", str(target)),
                             model=EvalModel("Other", loader=lambda: None))
    target = tmp_path / "mme_as_mmbench.jsonl"
    shutil.copy(answers["mme"], target)
    with pytest.raises(UserError, match="holds a VQA-style answer"):
        model_vqa_mmbench.run(common(model_path, "--question-file", str(bench / "mmbench/mmbench_dev_20230712.tsv"),
                                     "--answers-file", str(target)), model=model)
    # --overwrite replaces it.
    result = model_vqa_loader.run(common(model_path, *mme, "--answers-file", str(tmp_path / "textvqa.jsonl"),
                                         "--overwrite", "--limit", "1"), model=model)
    assert result.written == 1 and len(read_jsonl(tmp_path / "textvqa.jsonl")) == 1


# ------------------------------------------------------------------------------ CLI, scripts, mgm
def test_mgm_eval_cli_runs_shards_merges_and_scores(bench, model_path, tmp_path, capsys):
    from mgm.__main__ import main as mgm_main

    assert mgm_main(["eval", "mme", "sqa", "--model-path", model_path, "--data-root", str(bench), "--work-dir",
                     str(tmp_path), "--device", "cpu", "--max-new-tokens", MAX_NEW, "--no-progress",
                     "--num-chunks", "2"]) == 0
    out = capsys.readouterr().out
    assert "=========== Perception ===========" in out and "Total: 4, Correct: " in out
    merged = tmp_path / "scienceqa/answers/MGM-Tiny-Vicuna/merge.jsonl"
    assert [r["question_id"] for r in read_jsonl(merged)] == ["100", "101", "102", "103"]
    assert (tmp_path / "scienceqa/answers/MGM-Tiny-Vicuna/2_1.jsonl").is_file()
    with pytest.raises(SystemExit) as exc:
        mgm_main(["eval", "nonsense", "--model-path", model_path])
    assert exc.value.code == 2 and "unknown benchmark 'nonsense'" in capsys.readouterr().err


def test_mgm_dispatcher_help_and_errors(capsys):
    from mgm.__main__ import main as mgm_main

    assert mgm_main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("eval", "zoo tiny", "chat", "train", "inspect", "check", "serve controller", "serve worker",
                    "serve web"):
        assert f"  {command} " in text
    assert mgm_main(["serve", "nope"]) == 2
    assert "did you mean: serve controller" in capsys.readouterr().err
    assert mgm_main(["eval", "--list"]) == 0
    assert "mmmu_test" in capsys.readouterr().out


def test_eval_scripts_parse_and_one_runs_on_cpu(bench, model_path, tmp_path):
    scripts = sorted((REPO / "scripts").glob("*/eval/*.sh"))
    names = {"textvqa", "mmbench", "mme", "mmvet", "mmmu", "mmmu_test", "math_vista"}
    for family in ("gemma", "llama", "llama3", "mixtral", "yi"):
        assert {p.stem for p in scripts if p.parent.parent.name == family} == names, family
    for script in [*scripts, REPO / "scripts/eval_common.sh"]:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, (script, proc.stderr)
    env = dict(os.environ, CKPT="MGM-Tiny-Vicuna", MODEL_PATH=model_path, DATA_ROOT=str(bench), WORK_DIR=str(tmp_path),
               GPUS="cpu", PYTHON=sys.executable, EXTRA_ARGS=f"--max_new_tokens {MAX_NEW} --no-progress")
    proc = subprocess.run(["bash", str(REPO / "scripts/llama/eval/mmmu.sh")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'num_example': 9" in proc.stdout
    assert len(read_jsonl(tmp_path / "MMMU/answers/MGM-Tiny-Vicuna/merge.jsonl")) == 9
    assert json.loads((tmp_path / "MMMU/MGM-Tiny-Vicuna/val.json").read_text())["metric_dict"]["num_example"] == 9


def test_default_batch_size_for_a_tiny_model_on_cpu(model):
    from mgm.eval.runner import default_batch_size

    assert default_batch_size(model.engine, 128) == 16
