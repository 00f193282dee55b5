"""lmms-eval's own CLI runs the `mgm` model (mgm.integrations.lmms_eval) offline on local tasks.

The tasks are YAML files this test writes, over parquet files with embedded images; one run of
`lmms-eval --model mgm ... --log_samples` covers generate_until (answers equal
`python -m mgm.eval.model_vqa_loader` on the same questions, with and without `until` stops),
multiple choice (loglikelihood, checked against a plain forward pass with labels and against mgm's own
choice of the likeliest answer; tasks whose gold choice is the model's own greedy continuation or an
unlikely string score 1.0 and 0.0) and a multi-round task; then the listing, exit status and device
errors of the front ends. Skipped where lmms-eval is not importable (it lives in its own venv:
scripts/setup_eval_harness_venv.sh lmms-eval).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed in this python; CI runs this file in the "
                                        "venv built by scripts/setup_eval_harness_venv.sh lmms-eval")

from harness_data import COLOURS, questions, run_mgm_runner, trim_at, write_llava_jsonl  # noqa: E402

CHECKPOINT = "MGM-Tiny-Vicuna"
MAX_NEW_TOKENS = 12
TASKS = ("mgm_tiny_vqa", "mgm_tiny_vqa_until", "mgm_tiny_mc", "mgm_tiny_mc_greedy", "mgm_tiny_mc_unlikely",
         "mgm_tiny_rounds")

UNLIKELY = "zebra xylophone quantum marmalade"  # a choice no model picks over its own greedy continuation

TASK_UTILS = f'''
"""doc_to_* functions of the test tasks."""

UNLIKELY = {UNLIKELY!r}
''' + '''


def doc_to_visual(doc):
    return [doc["image"]]


def doc_to_text_mc(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + " Answer with a colour."


def doc_to_choice_pair(doc):
    return [doc["greedy"], UNLIKELY]


def doc_to_text_rounds(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx=None,
                       previous_round_info=None):
    if round_idx is None:
        return doc["question"]
    # round 2 asks the same question again with the image; after it the conversation ends
    return [doc["image"]], doc["question"], round_idx >= 2, previous_output, None


def process_rounds(doc, results):
    return {"rounds": float(len(results[0]))}
'''


def _task(name: str, data: Path, output_type: str, extra: str) -> str:
    return (f"task: {name}\ndataset_path: parquet\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\noutput_type: {output_type}\ndoc_to_visual: !function utils.doc_to_visual\n"
            + extra)


def _generate_task(name: str, data: Path, until: list[str]) -> str:
    return _task(name, data, "generate_until",
                 "doc_to_text: question\ndoc_to_target: answer\n"
                 f"generation_kwargs:\n  max_new_tokens: {MAX_NEW_TOKENS}\n  temperature: 0\n"
                 f"  until: {json.dumps(until)}\n"
                 "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")


def _greedy_choices(ckpt: str, records: list[dict]) -> list[str]:
    """Per question, the longest greedy answer (up to 3 tokens) that scores back as greedy: the model's
    own continuation, as a string lmms-eval can hand back as a choice; checked far likelier than UNLIKELY."""
    import io

    from PIL import Image

    from mgm.integrations.harness import HarnessModel, Question
    from mgm.serve.engine import GenerationParams

    harness = HarnessModel(ckpt, conv_mode="vicuna_v1", device="cpu")
    questions_ = [Question(r["text"] + " Answer with a colour.", [Image.open(io.BytesIO(r["png"]))]) for r in records]
    best = [None] * len(records)
    for n in (1, 2, 3):
        answers = harness.answer(questions_, GenerationParams(temperature=0, max_new_tokens=n))
        for i, (answer, (_, greedy)) in enumerate(zip(answers, harness.score(questions_, [" " + a for a in answers]))):
            if greedy and answer:
                best[i] = answer
    assert all(best), best
    likely = harness.score(questions_, [" " + b for b in best])
    unlikely = harness.score(questions_, [" " + UNLIKELY] * len(records))
    assert all(g and lp > ulp for (lp, g), (ulp, _) in zip(likely, unlikely)), (likely, unlikely)
    return best


@pytest.fixture(scope="module")
def run(tiny_zoo, tmp_path_factory):
    """Data, loader answers, task YAMLs, and one lmms-eval CLI run over all tasks."""
    from datasets import Dataset, Features, Image, Value

    root = tmp_path_factory.mktemp("lmms_eval")
    ckpt = tiny_zoo["checkpoints"][CHECKPOINT]["path"]
    records = questions(6)
    qfile, images = write_llava_jsonl(records, root)
    loader = run_mgm_runner("mgm.eval.model_vqa_loader", [
        "--model-path", ckpt, "--question-file", str(qfile), "--image-folder", str(images),
        "--answers-file", str(root / "loader.jsonl"), "--conv-mode", "vicuna_v1", "--temperature", "0",
        "--max_new_tokens", str(MAX_NEW_TOKENS), "--device", "cpu", "--no-progress"])
    expected = {r["question_id"]: r["text"] for r in loader}

    names = list(COLOURS)
    greedy = _greedy_choices(ckpt, records)
    features = Features({"question_id": Value("string"), "question": Value("string"), "image": Image(),
                         "answer": Value("string"), "label": Value("int64"), "greedy": Value("string")})
    table = {"question_id": [r["question_id"] for r in records], "question": [r["text"] for r in records],
             "image": [{"bytes": r["png"], "path": None} for r in records],
             "answer": [r["colour"] for r in records], "label": [names.index(r["colour"]) for r in records],
             "greedy": greedy}
    data = root / "data" / "test.parquet"
    data.parent.mkdir()
    Dataset.from_dict(table, features=features).to_parquet(str(data))

    # a stop string that occurs inside some loader answer, so `until` visibly cuts it
    longest = max(expected.values(), key=len)
    stop = longest[len(longest) // 2: len(longest) // 2 + 2]
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(TASK_UTILS)
    (tasks / "mgm_tiny_vqa.yaml").write_text(_generate_task("mgm_tiny_vqa", data, []))
    (tasks / "mgm_tiny_vqa_until.yaml").write_text(_generate_task("mgm_tiny_vqa_until", data, [stop]))
    (tasks / "mgm_tiny_mc.yaml").write_text(_task(
        "mgm_tiny_mc", data, "multiple_choice",
        "doc_to_text: !function utils.doc_to_text_mc\ndoc_to_target: label\n"
        f"doc_to_choice: {json.dumps(names)}\nmetric_list:\n  - metric: acc\n"))
    for name, gold in (("mgm_tiny_mc_greedy", 0), ("mgm_tiny_mc_unlikely", 1)):
        # choices [the model's own greedy continuation, UNLIKELY]; the gold one is first or second
        (tasks / f"{name}.yaml").write_text(_task(
            name, data, "multiple_choice",
            f"doc_to_text: !function utils.doc_to_text_mc\ndoc_to_target: {gold}\n"
            "doc_to_choice: !function utils.doc_to_choice_pair\nmetric_list:\n  - metric: acc\n"
            "  - metric: acc_norm\n"))
    (tasks / "mgm_tiny_rounds.yaml").write_text(_task(
        "mgm_tiny_rounds", data, "generate_until_multi_round",
        "doc_to_text: !function utils.doc_to_text_rounds\ndoc_to_target: answer\n"
        f"generation_kwargs:\n  max_new_tokens: {MAX_NEW_TOKENS}\n  temperature: 0\n  until: []\n"
        "process_results: !function utils.process_rounds\n"
        "metric_list:\n  - metric: rounds\n    aggregation: mean\n    higher_is_better: true\n"))

    out = root / "out"
    cli = Path(sys.executable).with_name("lmms-eval")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "lmms_eval"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(root / "hf"),
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(command + [
        "--model", "mgm", "--model_args", f"pretrained={ckpt},conv_mode=vicuna_v1,batch_size=4,device=cpu",
        "--tasks", ",".join(TASKS), "--include_path", str(tasks),
        "--output_path", str(out), "--log_samples", "--verbosity", "WARNING"],
        capture_output=True, text=True, timeout=900, env=env, cwd=root)
    # lmms-eval logs a failed evaluation and still exits 0: the results file is the real signal
    assert proc.returncode == 0 and list(out.rglob("*_results.json")), proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"root": root, "out": out, "records": records, "expected": expected, "stop": stop, "ckpt": ckpt,
            "proc": proc, "tasks": tasks, "env": env, "greedy": greedy}


def _samples(out: Path, task: str) -> list[dict]:
    files = sorted(out.rglob(f"*_samples_{task}.jsonl"))
    assert files, f"no samples file for {task} under {out}: {[str(p) for p in out.rglob('*')]}"
    return sorted((json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()),
                  key=lambda s: s["doc_id"])


def _answer(sample: dict):
    resp = sample["filtered_resps"]
    return resp[0] if isinstance(resp, list) and len(resp) == 1 else resp


def test_results_json_has_every_task(run):
    files = sorted(run["out"].rglob("*_results.json"))
    assert files, run["proc"].stderr[-2000:]
    results = json.loads(files[-1].read_text())["results"]
    assert set(results) >= set(TASKS)
    assert 0.0 <= results["mgm_tiny_mc"]["acc,none"] <= 1.0
    assert results["mgm_tiny_rounds"]["rounds,none"] == 2.0


def test_multiple_choice_picks_the_likely_choice(run):
    """Choices [the model's own greedy continuation, an unlikely string]: scored on the likely one, so
    the task whose gold is the greedy continuation scores 1.0 and the one whose gold is the unlikely
    string 0.0 (an adapter handing lmms-eval's argmin log-probabilities scores exactly the reverse)."""
    files = sorted(run["out"].rglob("*_results.json"))
    results = json.loads(files[-1].read_text())["results"]
    for metric in ("acc,none", "acc_norm,none"):
        assert results["mgm_tiny_mc_greedy"][metric] == 1.0, results["mgm_tiny_mc_greedy"]
        assert results["mgm_tiny_mc_unlikely"][metric] == 0.0, results["mgm_tiny_mc_unlikely"]
    for s in _samples(run["out"], "mgm_tiny_mc_greedy"):
        (likely, greedy), (unlikely, _) = s["filtered_resps"]
        assert greedy == "True" and 0.0 < float(likely) < float(unlikely)  # losses: lower is likelier


def test_multiple_choice_acc_equals_mgm_scoring(run, loaded_models):
    """Per document, lmms-eval's acc is 1 exactly when mgm's own scorer (HarnessModel.score, the most
    likely choice) picks the labelled colour."""
    import io

    from PIL import Image

    from mgm.integrations.harness import HarnessModel, Question

    harness = HarnessModel(run["ckpt"], conv_mode="vicuna_v1", device="cpu")
    names = list(COLOURS)
    samples = _samples(run["out"], "mgm_tiny_mc")
    assert len(samples) == len(run["records"])
    for s in samples:
        record = run["records"][s["doc_id"]]
        question = Question(record["text"] + " Answer with a colour.", [Image.open(io.BytesIO(record["png"]))])
        scores = [lp for lp, _ in harness.score([question] * len(names), [" " + n for n in names])]
        picked = max(range(len(names)), key=scores.__getitem__)
        assert s["acc"] == float(picked == names.index(record["colour"])), (scores, s["filtered_resps"])


def test_generate_until_equals_model_vqa_loader(run):
    samples = _samples(run["out"], "mgm_tiny_vqa")
    assert len(samples) == len(run["records"])
    got = {run["records"][s["doc_id"]]["question_id"]: _answer(s) for s in samples}
    assert got == run["expected"]
    assert any(got.values())  # the tiny model says something, so equality means something


def test_until_stops_cut_the_answer(run):
    stop = run["stop"]
    samples = _samples(run["out"], "mgm_tiny_vqa_until")
    got = {run["records"][s["doc_id"]]["question_id"]: _answer(s) for s in samples}
    want = {qid: trim_at(text, [stop]) for qid, text in run["expected"].items()}
    assert got == want
    assert want != run["expected"]  # at least one answer was cut


def test_multi_round_answers_each_round(run):
    samples = _samples(run["out"], "mgm_tiny_rounds")
    for s in samples:
        rounds = s["resps"][0] if "resps" in s else s["filtered_resps"]
        rounds = rounds[0] if rounds and isinstance(rounds[0], list) else rounds
        want = run["expected"][run["records"][s["doc_id"]]["question_id"]]
        assert list(rounds) == [want, want]


def test_multiple_choice_loglikelihood_matches_a_labelled_forward(run, loaded_models):
    """Each choice's value is the summed cross-entropy (-log p) of a plain one-row forward with labels."""
    import io

    import torch
    from PIL import Image

    from mgm.eval.runner import build_prompt
    from mgm.mm_utils import tokenizer_image_token
    from mgm.serve.engine import InferenceEngine

    tokenizer, model, processor, context_len = loaded_models(CHECKPOINT)
    engine = InferenceEngine(tokenizer, model, processor, context_len)
    samples = _samples(run["out"], "mgm_tiny_mc")
    assert len(samples) == len(run["records"])
    names = list(COLOURS)
    for s in samples:
        record = run["records"][s["doc_id"]]
        images, images_aux = engine.image_tensors([Image.open(io.BytesIO(record["png"]))])
        prompt = build_prompt("vicuna_v1", "<image>\n" + record["text"] + " Answer with a colour.")
        prompt_ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
        scored = s["filtered_resps"]  # the samples file stores [loss, is-greedy] as strings
        assert len(scored) == len(names)
        for choice, (loss, greedy) in zip(names, scored):
            ids = tokenizer_image_token(prompt + " " + choice, tokenizer, return_tensors="pt")
            labels = ids.clone()
            labels[: prompt_ids.shape[0]] = -100
            with torch.inference_mode():
                out = model(input_ids=ids[None], labels=labels[None], images=images, images_aux=images_aux)
            n = int((labels != -100).sum())
            assert n > 0 and greedy in ("True", "False")
            assert float(loss) == pytest.approx(float(out.loss) * n, rel=1e-4, abs=1e-3)  # -log p, summed


@pytest.mark.slow
def test_data_parallel_under_accelerate_gives_the_same_samples(run):
    """`accelerate launch --multi_gpu --num_processes 2 -m lmms_eval` (torchrun; without CUDA each process
    runs on the CPU with gloo): each process loads a replica,
    lmms-eval shards the requests by rank and gathers them; the samples equal the one-process run."""
    out = run["root"] / "out_dp"
    proc = subprocess.run([
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmms_eval",
        "--model", "mgm", "--model_args", f"pretrained={run['ckpt']},conv_mode=vicuna_v1,batch_size=2",
        "--tasks", "mgm_tiny_vqa,mgm_tiny_mc", "--include_path", str(run["tasks"]), "--output_path", str(out),
        "--log_samples", "--verbosity", "WARNING"],
        capture_output=True, text=True, timeout=900, env=run["env"], cwd=run["root"])
    assert proc.returncode == 0 and list(out.rglob("*_results.json")), proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (proc.stdout + proc.stderr).count("Loading weights: 100%") >= 2  # one replica per process
    one = [(s["doc_id"], s["filtered_resps"]) for s in _samples(run["out"], "mgm_tiny_vqa")]
    assert [(s["doc_id"], s["filtered_resps"]) for s in _samples(out, "mgm_tiny_vqa")] == one
    one = [[float(ll) for ll, _ in s["filtered_resps"]] for s in _samples(run["out"], "mgm_tiny_mc")]
    two = [[float(ll) for ll, _ in s["filtered_resps"]] for s in _samples(out, "mgm_tiny_mc")]
    assert len(two) == len(one)  # log-likelihoods: equal up to the float noise of other batch make-ups
    for a, b in zip(one, two):
        assert b == pytest.approx(a, abs=1e-3)


def test_unknown_model_arg_is_named(tiny_zoo):
    from mgm.errors import UserError
    from mgm.integrations.lmms_eval.model import MGM

    with pytest.raises(UserError, match="unknown model_args for mgm: colour"):
        MGM.create_from_arg_string(f"pretrained={tiny_zoo['checkpoints'][CHECKPOINT]['path']},colour=red")


def test_entry_point_registers_mgm():
    from lmms_eval.models import get_model

    from mgm.integrations.lmms_eval.model import MGM

    assert get_model("mgm") is MGM


def _cli(env: dict, cwd, *args: str, launcher: bool = False) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).with_name("lmms-eval")
    if launcher:
        command = [sys.executable, "-m", "mgm.integrations.lmms_eval.run"]
    else:
        command = [str(cli)] if cli.exists() else [sys.executable, "-m", "lmms_eval"]
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def test_models_command_lists_mgm(run):
    proc = _cli(run["env"], run["root"], "models")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert ["mgm", "simple"] in rows, proc.stdout[-3000:]


@pytest.mark.parametrize("case", ["unknown task", "missing data file"])
def test_launcher_exits_nonzero_when_a_task_or_its_data_is_missing(run, tmp_path, case):
    """lmms-eval's own CLI logs these and exits 0; `python -m mgm.integrations.lmms_eval.run` exits 1."""
    tasks = tmp_path / "tasks"
    shutil.copytree(run["tasks"], tasks)
    task = "mgm_tiny_nowhere"
    if case == "missing data file":
        (tasks / f"{task}.yaml").write_text(_generate_task(task, tmp_path / "no" / "test.parquet", []))
    args = ["--model", "mgm", "--model_args", f"pretrained={run['ckpt']},device=cpu", "--tasks", task,
            "--include_path", str(tasks), "--output_path", str(tmp_path / "out"), "--verbosity", "WARNING"]
    if case == "unknown task":
        plain = _cli(run["env"], tmp_path, *args)
        assert plain.returncode == 0  # lmms-eval's own behaviour, which the launcher exists to correct
    proc = _cli(run["env"], tmp_path, *args, launcher=True)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "lmms-eval evaluation(s) failed" in proc.stderr
    assert ("Tasks not found: mgm_tiny_nowhere" if case == "unknown task" else "test.parquet") in proc.stderr
    assert not list((tmp_path / "out").rglob("*_results.json"))


def test_launcher_exits_zero_and_writes_results_when_all_is_well(run, tmp_path):
    proc = _cli(run["env"], tmp_path, "--model", "mgm", "--model_args", f"pretrained={run['ckpt']},device=cpu",
                "--tasks", "mgm_tiny_vqa", "--include_path", str(run["tasks"]), "--limit", "2",
                "--output_path", str(tmp_path / "out"), "--verbosity", "WARNING", launcher=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert list((tmp_path / "out").rglob("*_results.json"))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without CUDA")
def test_device_cuda_without_cuda_is_an_error(run, tmp_path):
    from mgm.errors import UserError
    from mgm.integrations.lmms_eval.model import MGM

    with pytest.raises(UserError, match="device=cuda was asked for, but CUDA is not available"):
        MGM.create_from_arg_string(f"pretrained={run['ckpt']},device=cuda")
    with pytest.raises(UserError, match="CUDA is not available"):
        MGM.create_from_arg_string(f"pretrained={run['ckpt']}", {"device": "cuda:0"})  # lmms-eval's --device
    proc = _cli(run["env"], tmp_path, "--model", "mgm", "--model_args", f"pretrained={run['ckpt']},device=cuda",
                "--tasks", "mgm_tiny_vqa", "--include_path", str(run["tasks"]), "--output_path",
                str(tmp_path / "out"), "--verbosity", "WARNING", launcher=True)
    assert proc.returncode == 1 and "CUDA is not available" in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README's offline lmms-eval example, run as written in an empty folder."""
    from readme_examples import run_example

    root = tmp_path_factory.mktemp("readme_lmms_eval")
    proc = run_example(["toolkits-data", "lmms-eval-offline"], root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root


def test_readme_example_open_questions_equal_model_vqa_loader(readme_run):
    root = readme_run
    samples = _samples(root / "lmms_results", "my_vqa")
    loader = run_mgm_runner("mgm.eval.model_vqa_loader", [
        "--model-path", str(root / "zoo/MGM/MGM-Tiny-Vicuna"),
        "--question-file", str(root / "bench/textvqa/llava_textvqa_val_v051_ocr.jsonl"),
        "--image-folder", str(root / "bench/textvqa/train_images"), "--answers-file", str(root / "loader.jsonl"),
        "--conv-mode", "vicuna_v1", "--temperature", "0", "--max_new_tokens", "16", "--device", "cpu", "--no-progress"])
    assert len(samples) == len(loader) > 0
    assert [s["input"] for s in samples] == [r["prompt"] for r in loader]
    assert [_answer(s) for s in samples] == [r["text"] for r in loader]
    assert any(r["text"] for r in loader)


def test_readme_example_multiple_choice_asks_model_vqa_mmbench_and_picks_the_likeliest(readme_run):
    """my_mmbench: each prompt is model_vqa_mmbench --single-pred-prompt's, and lmms-eval's acc per row is 1
    exactly when the answer letter is the likeliest letter by mgm's own scorer."""
    import base64
    import io

    from PIL import Image

    from mgm.eval.model_vqa_mmbench import SINGLE_PRED_PROMPT
    from mgm.integrations.harness import HarnessModel, Question

    root = readme_run
    tsv = root / "bench/mmbench/mmbench_dev_20230712.tsv"
    samples = _samples(root / "lmms_results", "my_mmbench")
    runner = run_mgm_runner("mgm.eval.model_vqa_mmbench", [
        "--model-path", str(root / "zoo/MGM/MGM-Tiny-Vicuna"), "--question-file", str(tsv), "--single-pred-prompt",
        "--answers-file", str(root / "mmbench.jsonl"), "--conv-mode", "vicuna_v1", "--temperature", "0",
        "--max_new_tokens", "4", "--device", "cpu", "--no-progress"])
    assert len(samples) == len(runner) > 0
    assert [s["input"] for s in samples] == [r["prompt"] + "\n" + SINGLE_PRED_PROMPT["en"] for r in runner]

    import pandas as pd

    rows = pd.read_table(tsv).to_dict("records")
    harness = HarnessModel(str(root / "zoo/MGM/MGM-Tiny-Vicuna"), conv_mode="vicuna_v1", device="cpu")
    for s, r, row in zip(samples, runner, rows):
        image = Image.open(io.BytesIO(base64.b64decode(row["image"])))
        letters = r["option_char"]
        scores = [lp for lp, _ in harness.score([Question(s["input"], [image])] * len(letters),
                                                [" " + c for c in letters])]
        picked = letters[max(range(len(letters)), key=scores.__getitem__)]
        assert float(s["acc"]) == float(picked == row["answer"]), (scores, s["filtered_resps"])
