"""VLMEvalKit's own run.py / inference loop runs MGM checkpoints (mgm.integrations.vlmevalkit) offline.

Local TSV datasets (an open-question set with a `hint` column and an MMBench-format multiple-choice
set, images as base64) are put in an LMUData folder; `python -m mgm.integrations.vlmevalkit.run --mgm
... --mode infer` registers a normal and an HD checkpoint and runs VLMEvalKit, which writes its
prediction files. Answers equal mgm's runners on the same questions: `model_vqa_loader` for the open
questions, `model_vqa_mmbench --single-pred-prompt` for the multiple choice. A second run scores two
multiple-choice sets with VLMEvalKit's own evaluation (exact matching): option A is what the model
answers, option B an unlikely string; gold A scores 1.0 and gold B 0.0. Then the launcher's refusals
(unknown dataset, local VQA set without --mode infer, device=cuda without CUDA). Skipped where
VLMEvalKit is not importable (it lives in its own venv: scripts/setup_eval_harness_venv.sh vlmevalkit).
"""
from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

pytest.importorskip("vlmeval", reason="VLMEvalKit is not installed in this python; CI runs this file in the "
                                      "venv built by scripts/setup_eval_harness_venv.sh vlmevalkit")

from harness_data import questions, write_llava_jsonl, write_mmbench_tsv  # noqa: E402

MODELS = {"MGM-Tiny": "MGM-Tiny-Vicuna", "MGM-Tiny-HD": "MGM-Tiny-Vicuna-HD"}
VQA, MCQ = "MGMTinyVQA", "MGMTinyMCQ"
GREEDY, UNLIKELY_GOLD = "MGMTinyGreedyGold", "MGMTinyUnlikelyGold"  # multiple choice, scored by VLMEvalKit
MAX_NEW_TOKENS = 12
UNLIKELY = "zebra xylophone quantum marmalade"


def _runner_answers(module: str, argv: list[str]) -> dict:
    """mgm's own runner (its `run`, the code behind `python -m <module>`), answers by question id."""
    import importlib
    import json

    importlib.import_module(module).run(argv)
    answers = argv[argv.index("--answers-file") + 1]
    with open(answers) as f:
        return {r["question_id"]: r["text"] for r in map(json.loads, f) if r}


@pytest.fixture(scope="module")
def run(tiny_zoo, tmp_path_factory):
    import pandas as pd

    root = tmp_path_factory.mktemp("vlmevalkit")
    records = questions(6)
    lmu = root / "LMUData"
    lmu.mkdir()
    # a hint column, which VLMEvalKit's MCQ typing of local sets used to put into the prompt
    pd.DataFrame([{"index": i, "question": r["text"], "hint": "A picture.", "answer": r["colour"],
                   "image": base64.b64encode(r["png"]).decode()} for i, r in enumerate(records)]
                 ).to_csv(lmu / f"{VQA}.tsv", sep="\t", index=False)
    mcq_tsv = write_mmbench_tsv(records, lmu / f"{MCQ}.tsv")
    qfile, images = write_llava_jsonl(records, root / "llava")

    common = ["--conv-mode", "vicuna_v1", "--temperature", "0", "--max_new_tokens", str(MAX_NEW_TOKENS),
              "--device", "cpu", "--no-progress", "--batch-size", "4"]
    expected = {}
    for name, ckpt in MODELS.items():
        path = tiny_zoo["checkpoints"][ckpt]["path"]
        vqa = _runner_answers("mgm.eval.model_vqa_loader", [
            "--model-path", path, "--question-file", str(qfile), "--image-folder", str(images),
            "--answers-file", str(root / f"{name}-loader.jsonl"), *common])
        mcq = _runner_answers("mgm.eval.model_vqa_mmbench", [
            "--model-path", path, "--question-file", str(mcq_tsv), "--single-pred-prompt",
            "--answers-file", str(root / f"{name}-mmbench.jsonl"), *common])
        expected[name] = {VQA: {i: vqa[r["question_id"]] for i, r in enumerate(records)}, MCQ: mcq}

    specs = []
    for name, ckpt in MODELS.items():
        specs += ["--mgm", f"{name}={tiny_zoo['checkpoints'][ckpt]['path']},conv_mode=vicuna_v1,device=cpu,"
                           f"max_new_tokens={MAX_NEW_TOKENS}"]
    work = root / "outputs"
    # TSV predictions: the default xlsx escapes control characters a random tiny model emits (_x0014_)
    env = {**os.environ, "LMUData": str(lmu), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PRED_FORMAT": "tsv"}
    proc = subprocess.run([sys.executable, "-m", "mgm.integrations.vlmevalkit.run", *specs,
                           "--data", VQA, MCQ, "--model", *MODELS, "--mode", "infer", "--work-dir", str(work)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"work": work, "expected": expected, "proc": proc, "root": root, "lmu": lmu, "records": records,
            "env": env, "specs": specs}


def _own_answer_options(path: str, records: list[dict]) -> dict[int, str]:
    """{record index: option A} such that the model, asked the two-option question [A, UNLIKELY] with
    mgm's MMBench prompt, answers something VLMEvalKit's matcher reads as A (the answer contains A's
    text): found by asking, taking (a prefix of) the answer as the new A, and asking again."""
    import io

    from PIL import Image
    from vlmeval.utils.matching_util import can_infer

    from mgm.eval.model_vqa_mmbench import SINGLE_PRED_PROMPT, build_question
    from mgm.integrations.harness import HarnessModel, Question
    from mgm.serve.engine import GenerationParams

    harness = HarnessModel(path, conv_mode="vicuna_v1", device="cpu")
    params = GenerationParams(temperature=0, max_new_tokens=MAX_NEW_TOKENS)

    def ask(record: dict, option: str) -> str:
        text = build_question({"question": record["text"]}, [option, UNLIKELY], "AB")
        return harness.answer([Question(text + "\n" + SINGLE_PRED_PROMPT["en"],
                                        [Image.open(io.BytesIO(record["png"]))])], params)[0]

    found = {}
    for i, record in enumerate(records):
        answer = ask(record, "placeholder")
        for _ in range(4):
            candidates = [answer.strip()] + [answer.strip()[:n] for n in (6, 4, 3, 2)]
            hit = next((c for c in candidates if c.strip() and c.lower() not in ("a", "b")
                        and can_infer(ask(record, c), {"A": c, "B": UNLIKELY}) == "A"), None)
            if hit:
                found[i] = hit
                break
            answer = ask(record, candidates[0] or "placeholder")
    return found


@pytest.fixture(scope="module")
def scored(run, tiny_zoo):
    """VLMEvalKit infers and scores (exact matching) two-option sets whose gold is the model's own
    answer (A) or an unlikely string (B); returns VLMEvalKit's accuracy per set."""
    import pandas as pd

    path = tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]
    options = _own_answer_options(path, run["records"])
    assert len(options) >= 2, options  # enough items for the scores to mean something
    for dataset, gold in ((GREEDY, "A"), (UNLIKELY_GOLD, "B")):
        pd.DataFrame([{"index": i, "question": run["records"][i]["text"], "A": a, "B": UNLIKELY, "answer": gold,
                       "image": base64.b64encode(run["records"][i]["png"]).decode()} for i, a in options.items()]
                     ).to_csv(run["lmu"] / f"{dataset}.tsv", sep="\t", index=False)
    work = run["root"] / "scored"
    proc = subprocess.run([sys.executable, "-m", "mgm.integrations.vlmevalkit.run", *run["specs"][:2],
                           "--data", GREEDY, UNLIKELY_GOLD, "--model", "MGM-Tiny", "--judge", "exact_matching",
                           "--work-dir", str(work)],
                          capture_output=True, text=True, timeout=900, env=run["env"], cwd=run["root"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = {}
    for dataset in (GREEDY, UNLIKELY_GOLD):
        files = sorted(work.rglob(f"MGM-Tiny_{dataset}_acc.csv"))
        assert files, f"no accuracy file for {dataset}: {[str(p) for p in work.rglob('*')]}"
        out[dataset] = pd.read_csv(files[-1])
    return out


def _predictions(work, model: str, dataset: str) -> dict:
    """VLMEvalKit's prediction file, read back with VLMEvalKit's own loader: {index: prediction}."""
    from vlmeval.smp import load

    files = sorted(work.rglob(f"{model}_{dataset}.tsv"))
    assert files, f"no prediction file for {model} x {dataset}: {[str(p) for p in work.rglob('*')]}"
    frame = load(str(files[-1]))
    return {int(i): "" if p != p else str(p) for i, p in zip(frame["index"], frame["prediction"])}


@pytest.mark.parametrize("model", list(MODELS))
def test_open_questions_equal_model_vqa_loader(run, model):
    got = _predictions(run["work"], model, VQA)
    want = run["expected"][model][VQA]
    assert got == want
    assert any(want.values())


@pytest.mark.parametrize("model", list(MODELS))
def test_multiple_choice_equals_model_vqa_mmbench(run, model):
    got = _predictions(run["work"], model, MCQ)
    assert got == run["expected"][model][MCQ]


def test_normal_and_hd_answer_differently(run):
    """The HD checkpoint is really a different model here (guards against both names loading one)."""
    assert run["expected"]["MGM-Tiny"][VQA] != run["expected"]["MGM-Tiny-HD"][VQA]


def test_registration_and_bad_spec(tiny_zoo):
    import vlmeval.config
    import vlmeval.vlm

    from mgm.errors import UserError
    from mgm.integrations.vlmevalkit import register
    from mgm.integrations.vlmevalkit.model import MGM
    from mgm.integrations.vlmevalkit.run import parse_spec

    register("MGM-Registered", tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"], max_new_tokens=4)
    entry = vlmeval.config.supported_VLM["MGM-Registered"]
    assert entry.func is MGM and entry.keywords["max_new_tokens"] == 4
    assert vlmeval.vlm.MGM is MGM
    assert parse_spec("A=/x,conv_mode=gemma,load_8bit=true,top_p=0.5") == (
        "A", "/x", {"conv_mode": "gemma", "load_8bit": True, "top_p": 0.5})
    with pytest.raises(UserError, match="colour"):
        parse_spec("A=/x,colour=red")
    with pytest.raises(UserError, match="NAME=PATH"):
        parse_spec("/only/a/path")


def test_multiple_choice_scores_the_models_own_answer(scored):
    """VLMEvalKit's own MCQ scoring of mgm's predictions: gold = the model's answer -> 1.0, gold = an
    unlikely string -> 0.0 (same prompts, same predictions; only the answer column differs)."""
    assert float(scored[GREEDY]["Overall"].iloc[0]) == 1.0, scored[GREEDY]
    assert float(scored[UNLIKELY_GOLD]["Overall"].iloc[0]) == 0.0, scored[UNLIKELY_GOLD]


def _launch(run, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mgm.integrations.vlmevalkit.run", *args], capture_output=True,
                          text=True, timeout=600, env=run["env"], cwd=run["root"])


def test_unknown_dataset_exits_nonzero(run):
    proc = _launch(run, *run["specs"][:2], "--data", "MGMNoSuchSet", "--model", "MGM-Tiny", "--mode", "infer")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "MGMNoSuchSet: not a VLMEvalKit dataset and no local file" in proc.stderr
    assert f"LMUData={run['lmu']}" in proc.stderr


def test_local_vqa_set_needs_mode_infer(run):
    proc = _launch(run, *run["specs"][:2], "--data", VQA, "--model", "MGM-Tiny")
    assert proc.returncode == 2 and "add --mode infer" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without CUDA")
def test_device_cuda_without_cuda_is_an_error(run, tiny_zoo):
    from mgm.errors import UserError
    from mgm.integrations.vlmevalkit.model import MGM

    path = tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]
    with pytest.raises(UserError, match="device=cuda was asked for, but CUDA is not available"):
        MGM(model_path=path, device="cuda")
    proc = _launch(run, "--mgm", f"M={path},device=cuda", "--data", MCQ, "--model", "M", "--mode", "infer")
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README's offline VLMEvalKit example (after its data commands), run as written in an empty folder."""
    from readme_examples import run_example

    root = tmp_path_factory.mktemp("readme_vlmevalkit")
    proc = run_example(["toolkits-data", "vlmevalkit-offline"], root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root


def test_readme_example_predictions_equal_mgm_runners(readme_run):
    """MyVQA = model_vqa_loader on the question file, MyMCQ = model_vqa_mmbench --single-pred-prompt on the TSV;
    VLMEvalKit scored MyMCQ (its accuracy file exists)."""
    import json

    root = readme_run
    common = ["--model-path", str(root / "zoo/MGM/MGM-Tiny-Vicuna"), "--conv-mode", "vicuna_v1", "--temperature", "0",
              "--max_new_tokens", "16", "--device", "cpu", "--no-progress"]
    from mgm.eval import model_vqa_loader

    model_vqa_loader.run([
        "--question-file", str(root / "bench/textvqa/llava_textvqa_val_v051_ocr.jsonl"),
        "--image-folder", str(root / "bench/textvqa/train_images"), "--answers-file", str(root / "loader.jsonl"),
        *common])
    with open(root / "loader.jsonl") as f:  # in file order: TextVQA repeats question ids
        in_order = [json.loads(line)["text"] for line in f if line.strip()]
    vqa = _predictions(root / "vlmeval_results", "Tiny", "MyVQA")
    assert [vqa[i] for i in sorted(vqa)] == in_order and any(in_order)
    mcq = _runner_answers("mgm.eval.model_vqa_mmbench", [
        "--question-file", str(root / "LMUData/MyMCQ.tsv"), "--single-pred-prompt",
        "--answers-file", str(root / "mmbench.jsonl"), *common])
    assert _predictions(root / "vlmeval_results", "Tiny", "MyMCQ") == mcq
    assert list((root / "vlmeval_results").rglob("Tiny_MyMCQ_acc.csv"))
