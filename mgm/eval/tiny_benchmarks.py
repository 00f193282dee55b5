"""Tiny benchmark data sets in each benchmark's REAL file format, with PIL-drawn images, for CPU tests.

Usage:
    python -m mgm.eval.tiny_benchmarks --out DIR [--seed 0]

DIR is laid out like `data/MGM-Eval` (docs/original.md#evaluation), so `mgm eval <benchmark> --data-root DIR` and
the eval scripts (`DATA_ROOT=DIR`) run on it unchanged:

    textvqa/llava_textvqa_val_v051_ocr.jsonl     {question_id (= image_id), image, text} (LLaVA prompt
    textvqa/TextVQA_0.5.1_val.json                  with "Reference OCR token:" lines) + official annotations
    textvqa/train_images/<image_id>.jpg             (10 answers per question)
    MME/llava_mme.jsonl                          {question_id, image, text, category}
    MME/MME_Benchmark_release_version/           artwork/{images,questions_answers_YN}/ (images + Q/A apart),
                                                 existence/ and code_reasoning/ (images + <stem>.txt side by side)
    mmbench/mmbench_dev_20230712.tsv             index, question, hint, A-D, answer, category, image (base64 PNG),
                                                 source, l2-category, comment, split; NaN hints, "none"/missing options
    mm-vet/llava-mm-vet.jsonl, mm-vet/images/    {question_id, image, text}; mm-vet/mm-vet.json ground truth
    MMMU/<Subject>/{validation,test}-00000-of-00001.parquet
                                                 HF snapshot layout (Art, Math): id, question, options (text
                                                 of a Python list), image_1..image_7 ({bytes, path}), answer,
                                                 question_type, ...; MMMU/Physics/{validation,test}.json: the
                                                 local JSON layout (options as a list, images as files under
                                                 Physics/images/)
    MMMU/answer_dict_val.json                    {id: {question_type, ground_truth}}
    MathVista/testmini.json, MathVista/images/   pid -> problem (multi_choice, integer, float precision 1 and 2
                                                 with a unit, list), metadata, query
    scienceqa/llava_test_CQM-A.json              LLaVA ScienceQA questions (one text-only); problems.json,
    scienceqa/images/test/<pid>/image.png           pid_splits.json
    pope/llava_pope_test.jsonl, pope/coco/       questions with category; coco_pope_<category>.json labels (JSONL)
    pope/val2014/*.jpg
    manifest.json                                what was written (benchmark -> files and counts)

Python: `build_tiny_benchmarks(out_dir, seed=0) -> dict` (the manifest). Deterministic for a seed.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from mgm.errors import UserError, exit_on_user_error
from mgm.eval.runner import require_pandas

_COLORS = [(230, 57, 70), (29, 53, 87), (69, 123, 157), (168, 218, 220), (241, 250, 238), (255, 183, 3),
           (33, 158, 188), (2, 48, 71), (251, 133, 0), (142, 202, 230)]
_WORDS = ["stop", "cafe", "open", "exit", "sale", "bus", "taxi", "park", "hotel", "bank", "2024", "tea"]


def draw_image(rng: random.Random, text: str, size: tuple[int, int] | None = None) -> Image.Image:
    """A small RGB picture: coloured background, a few shapes and `text` written on it."""
    w, h = size or (rng.choice([64, 80, 96, 112]), rng.choice([48, 64, 72, 96]))
    bg = rng.choice(_COLORS)
    image = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):
        x0, y0 = rng.randrange(0, w // 2), rng.randrange(0, h // 2)
        x1, y1 = rng.randrange(x0 + 4, w), rng.randrange(y0 + 4, h)
        color = rng.choice([c for c in _COLORS if c != bg])
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=color)
    draw.text((3, 3), text, fill=(0, 0, 0))
    return image


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    image.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _write_json(path: Path, data: object, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent), encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


# ------------------------------------------------------------------------------------------ TextVQA
def build_textvqa(root: Path, rng: random.Random) -> dict:
    base = root / "textvqa"
    rows, data = [], []
    qid = 34602
    for n in range(4):
        image_id = f"{rng.getrandbits(64):016x}"
        word = _WORDS[n]
        image = draw_image(rng, word.upper())
        _save(image, base / "train_images" / f"{image_id}.jpg")
        questions = [("what word is written on the sign?", word),
                     ("what color is the background?", rng.choice(["red", "blue", "green"]))]
        for k, (question, answer) in enumerate(questions):
            if n == 3 and k == 1:
                text = f"{question}\nAnswer the question using a single word or phrase."  # no OCR tokens
            else:
                tokens = ", ".join(rng.sample(_WORDS, 3) + [word])
                text = f"{question}\nReference OCR token: {tokens}\nAnswer the question using a single word or phrase."
            rows.append({"question_id": image_id, "image": f"{image_id}.jpg", "text": text})
            # 10 human answers with some disagreement, as in the real annotations.
            answers = [answer] * rng.randint(6, 10)
            answers += [rng.choice(["unanswerable", "the " + answer, answer.upper()]) for _ in range(10 - len(answers))]
            data.append({"question": question, "image_id": image_id, "image_classes": ["Poster"],
                         "flickr_original_url": "", "flickr_300k_url": "", "image_width": image.width,
                         "image_height": image.height, "answers": answers, "question_tokens": question.split(),
                         "question_id": qid, "set_name": "val", "image_name": image_id})
            qid += 1
    _write_jsonl(base / "llava_textvqa_val_v051_ocr.jsonl", rows)
    _write_json(base / "TextVQA_0.5.1_val.json",
                {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})
    return {"questions": len(rows), "files": ["textvqa/llava_textvqa_val_v051_ocr.jsonl",
                                              "textvqa/TextVQA_0.5.1_val.json", "textvqa/train_images/"]}


# ---------------------------------------------------------------------------------------------- MME
_MME_CATEGORIES = {
    # category: (separate images/ + questions_answers_YN/ folders?, image suffix, questions)
    "artwork": (True, ".jpg", ["Is this artwork created by {}?", "Is this artwork displayed in {}?"]),
    "existence": (False, ".jpg", ["Is there a {} in this image?", "Is there a {} in this image?"]),
    "code_reasoning": (False, ".png", ["Will the code print {}?", "Does the code print {}?"]),
}


def build_mme(root: Path, rng: random.Random, images_per_category: int = 2) -> dict:
    """MME tree + llava_mme.jsonl: 3 categories x `images_per_category` images x 2 questions."""
    base = root / "MME"
    tree = base / "MME_Benchmark_release_version"
    rows = []
    for category, (separate, suffix, templates) in _MME_CATEGORIES.items():
        for n in range(images_per_category):
            stem = f"{10002 + n}" if category == "artwork" else f"{n:012d}"
            image_rel = f"{category}/images/{stem}{suffix}" if separate else f"{category}/{stem}{suffix}"
            _save(draw_image(rng, f"{category[:4]}{n}"), tree / image_rel)
            qa_dir = tree / category / ("questions_answers_YN" if separate else "")
            lines = []
            for k, template in enumerate(templates):
                question = template.format(rng.choice(_WORDS)) + " Please answer yes or no."
                lines.append(f"{question}\t{'Yes' if k == 0 else 'No'}")
                rows.append({"question_id": image_rel, "image": image_rel,
                             "text": question + "\nAnswer the question using a single word or phrase.",
                             "category": category})
            qa_dir.mkdir(parents=True, exist_ok=True)
            (qa_dir / f"{stem}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_jsonl(base / "llava_mme.jsonl", rows)
    return {"questions": len(rows), "files": ["MME/llava_mme.jsonl", "MME/MME_Benchmark_release_version/"]}


# ------------------------------------------------------------------------------------------ MMBench
def build_mmbench(root: Path, rng: random.Random) -> dict:
    pd = require_pandas()
    base = root / "mmbench"
    base.mkdir(parents=True, exist_ok=True)
    nan = float("nan")
    specs = [  # (hint, options A..D, answer)
        ("The picture shows a street sign.", ["red", "blue", "green", "yellow"], "A"),
        (nan, ["a cat", "a dog", "a bird", nan], "B"),
        ("Look at the text.", ["stop", "go", "none", "wait"], "A"),  # "none" ends the options after B
        (nan, ["yes", "no", nan, nan], "B"),
    ]
    rows = []
    for n, (hint, options, answer) in enumerate(specs):
        image = draw_image(rng, f"q{n}")
        rows.append({"index": 1000 + n, "question": f"Which option matches picture {n}?", "hint": hint,
                     "A": options[0], "B": options[1], "C": options[2], "D": options[3], "answer": answer,
                     "category": "attribute_recognition", "image": base64.b64encode(_png_bytes(image)).decode(),
                     "source": "tiny", "l2-category": "finegrained_perception", "comment": nan, "split": "dev"})
    pd.DataFrame(rows).to_csv(base / "mmbench_dev_20230712.tsv", sep="\t", index=False)
    return {"questions": len(rows), "files": ["mmbench/mmbench_dev_20230712.tsv"]}


# ------------------------------------------------------------------------------------------- MM-Vet
def build_mmvet(root: Path, rng: random.Random) -> dict:
    base = root / "mm-vet"
    rows, gt = [], {}
    for n in range(4):
        word = rng.choice(_WORDS)
        _save(draw_image(rng, word), base / "images" / f"v1_{n}.png")
        question = f"What is written in the image? Explain briefly ({n})."
        rows.append({"question_id": n, "image": f"v1_{n}.png", "text": question})
        gt[f"v1_{n}"] = {"imagename": f"v1_{n}.png", "capability": ["ocr"], "question": question, "answer": word}
    _write_jsonl(base / "llava-mm-vet.jsonl", rows)
    _write_json(base / "mm-vet.json", gt, indent=2)
    return {"questions": len(rows), "files": ["mm-vet/llava-mm-vet.jsonl", "mm-vet/images/", "mm-vet/mm-vet.json"]}


# --------------------------------------------------------------------------------------------- MMMU
def _mmmu_samples(subject: str, split: str, rng: random.Random) -> list[dict]:
    samples = []
    specs = [("multiple-choice", ["1", "2", "3", "4"], "B"), ("multiple-choice", ["red", "blue"], "A"),
             ("open", None, "42")]
    for n, (qtype, options, answer) in enumerate(specs, start=1):
        sample_id = f"{split}_{subject}_{n}"
        question = f"<image 1> What does picture {n} of {subject} show?"
        if split == "test":
            answer = "?" if qtype == "multiple-choice" else ""
        samples.append({"id": sample_id, "question": question, "options": options or [], "answer": answer,
                        "question_type": qtype, "image": draw_image(rng, f"{subject[:3]}{n}")})
    return samples


def build_mmmu(root: Path, rng: random.Random) -> dict:
    pd = require_pandas()
    base = root / "MMMU"
    answer_dict = {}
    files = []
    for subject in ("Art", "Math", "Physics"):
        for split in ("validation", "test"):
            samples = _mmmu_samples(subject, split, rng)
            if split == "validation":
                for s in samples:
                    answer_dict[s["id"]] = {"question_type": s["question_type"], "ground_truth": s["answer"]}
            if subject == "Physics":  # the local JSON layout: options as a list, images as files
                records = []
                for s in samples:
                    rel = f"images/{s['id']}_1.png"
                    _save(s["image"], base / subject / rel)
                    options = list(s["options"])
                    if s["id"].endswith("_2"):  # two option images -> no model call (random choice path)
                        options = ["<img='images/a.png'>", "<img='images/b.png'>"]
                    records.append({"id": s["id"], "question": s["question"], "options": options,
                                    "explanation": "", "image_1": rel, "img_type": "['Diagrams']",
                                    "answer": s["answer"], "topic_difficulty": "Easy",
                                    "question_type": s["question_type"], "subfield": "Mechanics"})
                _write_json(base / subject / f"{split}.json", records, indent=1)
                files.append(f"MMMU/{subject}/{split}.json")
                continue
            rows = []
            for s in samples:
                row = {"id": s["id"], "question": s["question"], "options": str(s["options"]),
                       "explanation": "", "img_type": "['Photographs']", "answer": s["answer"],
                       "topic_difficulty": "Easy", "question_type": s["question_type"], "subfield": subject}
                row["image_1"] = {"bytes": _png_bytes(s["image"]), "path": f"{s['id']}_1.png"}
                for k in range(2, 8):
                    row[f"image_{k}"] = None
                rows.append(row)
            path = base / subject / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_parquet(path, index=False)
            files.append(f"MMMU/{subject}/{path.name}")
    _write_json(base / "answer_dict_val.json", answer_dict, indent=1)
    return {"questions": len(answer_dict), "files": files + ["MMMU/answer_dict_val.json"]}


# ---------------------------------------------------------------------------------------- MathVista
def build_mathvista(root: Path, rng: random.Random) -> dict:
    base = root / "MathVista"
    specs = [
        dict(question="Which shape is red?", choices=["circle", "square", "triangle", "star"], unit=None,
             precision=None, answer="square", question_type="multi_choice", answer_type="text"),
        dict(question="How many shapes are there?", choices=None, unit=None, precision=None, answer="3",
             question_type="free_form", answer_type="integer"),
        dict(question="What is the ratio of width to height?", choices=None, unit=None, precision=1.0,
             answer="1.5", question_type="free_form", answer_type="float"),
        dict(question="How long is the bar?", choices=None, unit="cm", precision=2.0, answer="2.25",
             question_type="free_form", answer_type="float"),
        dict(question="List the x values of the points.", choices=None, unit=None, precision=None,
             answer="[1, 2, 3]", question_type="free_form", answer_type="list"),
    ]
    data = {}
    for n, spec in enumerate(specs, start=1):
        pid = str(n)
        image = draw_image(rng, f"m{n}")
        _save(image, base / "images" / f"{pid}.png")
        problem = {"question": spec["question"], "image": f"images/{pid}.png", "decoded_image": None,
                   "choices": spec["choices"], "unit": spec["unit"], "precision": spec["precision"],
                   "answer": spec["answer"], "question_type": spec["question_type"],
                   "answer_type": spec["answer_type"], "pid": pid,
                   "metadata": {"split": "testmini", "language": "english", "img_width": image.width,
                                "img_height": image.height, "source": "tiny", "category": "math-targeted-vqa",
                                "task": "figure question answering", "context": "synthetic scene",
                                "grade": "elementary school", "skills": ["arithmetic reasoning"]},
                   "query": spec["question"]}
        data[pid] = problem
    _write_json(base / "testmini.json", data, indent=2)
    return {"questions": len(data), "files": ["MathVista/testmini.json", "MathVista/images/"]}


# ---------------------------------------------------------------------------------------- ScienceQA
def build_scienceqa(root: Path, rng: random.Random) -> dict:
    base = root / "scienceqa"
    questions, problems = [], {}
    for n in range(4):
        pid = str(100 + n)
        choices = ["north", "south", "east"][: 2 + n % 2]
        answer = n % len(choices)
        has_image = n != 2
        options = " ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
        value = f"Context: A compass.\nQuestion: Which way does the arrow point ({n})?\nOptions: {options}"
        record = {"id": pid, "conversations": [
            {"from": "human", "value": ("<image>\n" if has_image else "") + value},
            {"from": "gpt", "value": chr(65 + answer)}]}
        if has_image:
            record["image"] = f"{pid}/image.png"
            _save(draw_image(rng, choices[answer][:2]), base / "images" / "test" / pid / "image.png")
        questions.append(record)
        problems[pid] = {"question": f"Which way does the arrow point ({n})?", "choices": choices, "answer": answer,
                         "hint": "A compass.", "image": "image.png" if has_image else None, "task": "closed choice",
                         "grade": "grade3", "subject": "natural science", "topic": "geography",
                         "category": "Geography", "skill": "Read a map", "lecture": "", "solution": "",
                         "split": "test"}
    _write_json(base / "llava_test_CQM-A.json", questions, indent=1)
    _write_json(base / "problems.json", problems, indent=1)
    _write_json(base / "pid_splits.json", {"train": [], "val": [], "test": list(problems)})
    return {"questions": len(questions), "files": ["scienceqa/llava_test_CQM-A.json", "scienceqa/problems.json",
                                                   "scienceqa/pid_splits.json", "scienceqa/images/test/"]}


# --------------------------------------------------------------------------------------------- POPE
def build_pope(root: Path, rng: random.Random) -> dict:
    base = root / "pope"
    questions = []
    labels: dict[str, list[dict]] = {}
    qid = 1
    for category in ("adversarial", "popular", "random"):
        for n in range(2):
            name = f"COCO_val2014_{rng.randrange(10**11):012d}.jpg"
            _save(draw_image(rng, category[:3]), base / "val2014" / name)
            obj = rng.choice(["person", "car", "dog", "chair"])
            text = f"Is there a {obj} in the image?"
            questions.append({"question_id": qid, "image": name, "text": text, "category": category})
            labels.setdefault(category, []).append({"question_id": qid, "image": name, "text": text,
                                                    "label": "yes" if n == 0 else "no"})
            qid += 1
    _write_jsonl(base / "llava_pope_test.jsonl", questions)
    for category, rows in labels.items():
        _write_jsonl(base / "coco" / f"coco_pope_{category}.json", rows)
    return {"questions": len(questions), "files": ["pope/llava_pope_test.jsonl", "pope/coco/", "pope/val2014/"]}


BUILDERS = {
    "textvqa": build_textvqa, "mme": build_mme, "mmbench": build_mmbench, "mmvet": build_mmvet,
    "mmmu": build_mmmu, "math_vista": build_mathvista, "scienceqa": build_scienceqa, "pope": build_pope,
}


def build_tiny_benchmarks(out_dir: str | os.PathLike, seed: int = 0) -> dict:
    """Write every tiny benchmark under `out_dir`; returns the manifest (also saved as manifest.json)."""
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"seed": seed, "root": str(root.resolve()), "benchmarks": {}}
    for offset, (name, build) in enumerate(BUILDERS.items()):
        # One generator per benchmark, so adding a benchmark never changes another's data.
        manifest["benchmarks"][name] = build(root, random.Random(seed * 1000 + offset))
    _write_json(root / "manifest.json", manifest, indent=2)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mgm.eval.tiny_benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (laid out like data/MGM-Eval)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    manifest = build_tiny_benchmarks(args.out, args.seed)
    counts = ", ".join(f"{k} {v['questions']}" for k, v in manifest["benchmarks"].items())
    print(f"tiny benchmarks written to {args.out} ({counts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
