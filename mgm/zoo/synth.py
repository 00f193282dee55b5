"""Synthetic MGM-Tiny data: shapes you can see at low resolution, textures and digits you can only see at high.

Run:

    python -m mgm.zoo.synth --out data/MGM-Tiny --seed 0 [--n-train 4000 --n-pretrain 2000 --n-eval 200
                                                         --turns 3 --image-size 128 --lr-size 32] [--force]

Every image is drawn with PIL from the seed (the same seed gives byte-identical files). A scene is

* coarse content, readable from the 32 px low-res (LR) view: 1-3 large shapes (36 px at 128) of one kind
  (circle, square, triangle) and one colour (red, green, blue, yellow, purple) on a white canvas;
* fine content, readable only from the high-res (HR) view: the shapes' texture (plain, striped or
  checkered), a digit 0-9 in a grey panel in the top-left corner and a mark (cross, ring, dot, bar) in
  one in the bottom-right corner. All three are drawn in *halftone* 2x2-pixel cells whose mean is the
  colour underneath (a texture adds +-40 to the shape colour in alternate rows or in a checkerboard;
  digit and mark "ink" is a dark/light grey checker on the panel's grey). The cells sit on the grid
  MGM's LR view samples: the LR image is a bilinear resize of the HR one without antialias, which at a
  4x reduction averages exactly one cell per output pixel, so the LR view is the same whatever the
  texture, digit or mark (tested). A LLaVA-style model fed a 32 px bicubic resize sees it nearly flat
  too (within about one grey level). At 128 px the digit is 6x10 pixels and plainly legible.

Questions use a small closed vocabulary (single-word answers) in six categories: coarse `colour`,
`shape`, `count` and fine `pattern`, `digit`, `mark`. Stage-2 turns come in the prompt forms of the
benchmarks (TextVQA's single-word instruction, MME's yes/no, MMBench's lettered options) and as bare
chat questions.

Tree written under OUT (the original data layout, `data/README.md`):

    OUT/
      synth_meta.json                       options, vocabulary, counts, categories of every eval question
      stage1.json, stage2.json              the two training files again, image paths relative to OUT
                                            (what scripts/tiny/train/*.sh read with --image_folder OUT)
      MGM-Pretrain/mgm_pretrain.json        stage 1: LLaVA JSON, one "<image>" caption turn per image
      MGM-Pretrain/images/*.png
      MGM-Finetune/mgm_instruction.json     stage 2: multi-turn LLaVA conversations (open, short-answer,
      MGM-Finetune/synth/*.png                yes/no and multiple-choice turns) + text-only samples
      MGM-Eval/textvqa/llava_textvqa_val_v051_ocr.jsonl  {question_id (= image_id), image, text}: open
                                                      questions, one per image, every category in turn
                                                      (the real file's name; the prompts carry no OCR tokens)
      MGM-Eval/textvqa/TextVQA_0.5.1_val.json         {"data": [{question_id, image_id, question, answers x10}]}
      MGM-Eval/textvqa/train_images/*.png
      MGM-Eval/MME/llava_mme.jsonl                    {question_id: "<category>/<image>", image, text, category}
      MGM-Eval/MME/MME_Benchmark_release_version/<category>/<image>.png + <image>.txt (2 yes/no lines)
          categories: color, count, existence (coarse: colour, count, shape) and OCR (fine: digit)
      MGM-Eval/mmbench/mmbench_dev_tiny.tsv           index, question, hint, A-D, answer, category, image
                                                      (base64 PNG), source, l2-category, comment, split

Python: `build_synth_data(out_dir, seed=0, ...) -> dict` (the meta); scenes: `mgm.zoo.scenes`
(`sample_scene`, `render_scene`, also importable from here).
"""
from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from mgm.errors import UserError, exit_on_user_error
from mgm.zoo.scenes import (  # noqa: F401  (the scene names are part of this module's API)
    COLOURS,
    SHAPES,
    COUNTS,
    PATTERNS,
    DIGITS,
    MARKS,
    COARSE,
    FINE,
    CATEGORIES,
    CATEGORY_WEIGHTS,
    SynthOptions,
    Scene,
    _choices,
    sample_scene,
    render_scene,
    write_demo_image,
)

SYNTH_FORMAT_VERSION = 1

# MME kit category of each of our categories that has an MME counterpart.
MME_CATEGORY: dict[str, str] = {"colour": "color", "count": "count", "shape": "existence", "digit": "OCR"}

SHORT_ANSWER = "Answer the question using a single word or phrase."
FORM_WEIGHTS: dict[str, float] = {"chat": 0.15, "short": 0.4, "yes_no": 0.15, "choice": 0.3}
YES_NO = "Please answer yes or no."
MC_SUFFIX = "Answer with the option's letter from the given choices directly."

QUESTIONS: dict[str, str] = {
    "colour": "What color are the shapes?",
    "shape": "Which shape is shown?",
    "count": "How many shapes are there?",
    "pattern": "What pattern fills the shapes?",
    "digit": "What digit is in the top left corner?",
    "mark": "What mark is in the bottom right corner?",
}
CAPTION_PROMPTS: tuple[str, ...] = ("Describe the image briefly.", "Give a short caption of the picture.",
                                    "What is in the image?")


# ----------------------------------------------------------------------------------------------- questions

def open_question(category: str, scene: Scene, rng: random.Random, short_suffix: bool) -> tuple[str, str]:
    """(question, answer) in the open form; `short_suffix` appends the TextVQA/MME single-word instruction."""
    question = QUESTIONS[category]
    return (question + "\n" + SHORT_ANSWER if short_suffix else question), scene.answer(category)


def yes_no_question(category: str, scene: Scene, truth: bool, rng: random.Random) -> tuple[str, str]:
    """(question ending in 'Please answer yes or no.', 'Yes'|'No') asking about a true or a false value."""
    value = scene.answer(category) if truth else rng.choice([c for c in _choices(category) if c != scene.answer(category)])
    text = {
        "colour": f"Are the shapes {value}?",
        "shape": f"Is there a {value} in the image?",
        "count": f"Are there {value} shapes?",
        "pattern": f"Are the shapes {value}?",
        "digit": f"Is the digit in the top left corner {value}?",
        "mark": f"Is the mark in the bottom right corner a {value}?",
    }[category]
    return f"{text} {YES_NO}", "Yes" if truth else "No"


def mc_options(category: str, scene: Scene, rng: random.Random) -> tuple[list[str], str]:
    """Up to four options including the answer, listed in vocabulary order, and the answer's letter.

    A fixed order (as numeric options usually come) lets the letter follow from the answer: a 2-layer
    64-wide LLM does not learn in a few minutes to match a visual fact against shuffled option texts."""
    vocab = _choices(category)
    wrong = [c for c in vocab if c != scene.answer(category)]
    options = sorted([scene.answer(category), *rng.sample(wrong, min(3, len(wrong)))], key=vocab.index)
    return options, "ABCD"[options.index(scene.answer(category))]


def mc_prompt(question: str, options: Sequence[str]) -> str:
    """The MMBench runner's prompt (hint-less, single-pred): question, 'X. option' lines, the suffix."""
    lines = [question, *(f"{letter}. {opt}" for letter, opt in zip("ABCD", options))]
    return "\n".join(lines) + "\n" + MC_SUFFIX


def caption(scene: Scene) -> str:
    """Stage-1 caption naming every fact of the scene."""
    plural = "s" if scene.count > 1 else ""
    return (f"{scene.count} {scene.pattern} {scene.colour} {scene.shape}{plural}, the digit {scene.digit} and a "
            f"{scene.mark}.")


def instruction_turns(scene: Scene, rng: random.Random, n_turns: int = 3,
                      forms: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """`n_turns` different categories, each asked in a form drawn with the weights `forms` (FORM_WEIGHTS):
    "chat" (bare question), "short" (TextVQA prompt), "yes_no" (MME prompt), "choice" (MMBench prompt)."""
    forms = forms or FORM_WEIGHTS
    turns = []
    for category in _weighted_sample(rng, CATEGORY_WEIGHTS, min(n_turns, len(CATEGORIES))):
        form = rng.choices(list(forms), weights=list(forms.values()))[0]
        if form in ("chat", "short"):
            turns.append(open_question(category, scene, rng, short_suffix=form == "short"))
        elif form == "yes_no":  # as LLaVA's llava_mme.jsonl asks it
            question, answer = yes_no_question(category, scene, rng.random() < 0.5, rng)
            turns.append((question + "\n" + SHORT_ANSWER, answer))
        else:
            options, letter = mc_options(category, scene, rng)
            turns.append((mc_prompt(QUESTIONS[category], options), letter))
    return turns


def _weighted_sample(rng: random.Random, weights: dict[str, float], k: int) -> list[str]:
    """k distinct keys drawn with probability proportional to their weights (without replacement)."""
    pool, picked = dict(weights), []
    for _ in range(k):
        key = rng.choices(list(pool), weights=list(pool.values()))[0]
        picked.append(key)
        del pool[key]
    return picked


def text_only_turns(rng: random.Random) -> list[tuple[str, str]]:
    """A short text-only exchange (no image), so stage 2 mixes modalities as the real data does."""
    turns = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.5:
            k = rng.randint(0, 8)
            turns.append((f"What number comes after {k}?\n{SHORT_ANSWER}", str(k + 1)))
        else:
            colour, shape = rng.choice(tuple(COLOURS)), rng.choice(SHAPES)
            pair = [colour, shape] if rng.random() < 0.5 else [shape, colour]
            turns.append((f"Which of these words is a color: {pair[0]} or {pair[1]}?", colour))
    return turns


def _conversation(turns: Sequence[tuple[str, str]], with_image: bool) -> list[dict[str, str]]:
    conv = []
    for i, (question, answer) in enumerate(turns):
        value = ("<image>\n" + question) if (with_image and i == 0) else question
        conv += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
    return conv


# ----------------------------------------------------------------------------------------------- writers

def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _rng(seed: int, stream: str) -> random.Random:
    # A str seed is hashed with SHA-512 by `random`, so every stream is reproducible across runs and machines.
    return random.Random(f"mgm-tiny/{seed}/{stream}")


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _rebase(samples: list[dict], folder: str) -> list[dict]:
    """The same samples with image paths relative to the data root (the tiny training scripts' --image_folder)."""
    return [{**s, "image": f"{folder}/{s['image']}"} if "image" in s else s for s in samples]


def write_pretrain(root: Path, seed: int, n: int, opts: SynthOptions) -> int:
    rng, images = _rng(seed, "pretrain"), root / "MGM-Pretrain" / "images"
    images.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        scene = sample_scene(rng, opts)
        name = f"pretrain_{i:06d}.png"
        render_scene(scene, opts).save(images / name)
        samples.append({"id": f"pretrain_{i:06d}", "image": f"images/{name}", "conversations": _conversation(
            [(rng.choice(CAPTION_PROMPTS), caption(scene))], with_image=True)})
    _write_json(root / "MGM-Pretrain" / "mgm_pretrain.json", samples)
    _write_json(root / "stage1.json", _rebase(samples, "MGM-Pretrain"))
    return len(samples)


def write_finetune(root: Path, seed: int, n: int, opts: SynthOptions, text_only_ratio: float = 0.1,
                   turns: int = 3, forms: dict[str, float] | None = None) -> dict[str, int]:
    rng, images = _rng(seed, "finetune"), root / "MGM-Finetune" / "synth"
    images.mkdir(parents=True, exist_ok=True)
    samples, n_text = [], 0
    for i in range(n):
        if rng.random() < text_only_ratio:
            samples.append({"id": f"text_{i:06d}", "conversations": _conversation(text_only_turns(rng), False)})
            n_text += 1
            continue
        scene = sample_scene(rng, opts)
        name = f"finetune_{i:06d}.png"
        render_scene(scene, opts).save(images / name)
        samples.append({"id": f"finetune_{i:06d}", "image": f"synth/{name}",
                        "conversations": _conversation(instruction_turns(scene, rng, turns, forms), with_image=True)})
    _write_json(root / "MGM-Finetune" / "mgm_instruction.json", samples)
    _write_json(root / "stage2.json", _rebase(samples, "MGM-Finetune"))
    return {"samples": len(samples), "text_only": n_text}


def write_textvqa(root: Path, seed: int, n: int, opts: SynthOptions) -> dict[str, str]:
    """Open questions, one per image, every category in turn. Returns {image_id: category}."""
    rng, base = _rng(seed, "textvqa"), root / "MGM-Eval" / "textvqa"
    (base / "train_images").mkdir(parents=True, exist_ok=True)
    questions, annotations, categories = [], [], {}
    for i in range(n):
        scene, category = sample_scene(rng, opts), CATEGORIES[i % len(CATEGORIES)]
        image_id = f"tiny{seed}_{i:05d}"
        render_scene(scene, opts).save(base / "train_images" / f"{image_id}.png")
        question = QUESTIONS[category]
        questions.append({"question_id": image_id, "image": f"{image_id}.png", "text": question + "\n" + SHORT_ANSWER})
        annotations.append({"question_id": i, "image_id": image_id, "question": question,
                            "answers": [scene.answer(category)] * 10, "set_name": "val"})
        categories[image_id] = category
    _write_jsonl(base / "llava_textvqa_val_v051_ocr.jsonl", questions)
    _write_json(base / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa",
                                                  "dataset_version": "0.5.1", "data": annotations})
    return categories


def write_mme(root: Path, seed: int, n: int, opts: SynthOptions) -> dict[str, str]:
    """Yes/no pairs (one true, one false) per image, MME categories cycling. Returns {MME category: ours}."""
    rng, base = _rng(seed, "mme"), root / "MGM-Eval" / "MME"
    tree = base / "MME_Benchmark_release_version"
    if tree.exists():
        shutil.rmtree(tree)  # stale images of a bigger earlier run must not be scored
    rows, ours = [], list(MME_CATEGORY)
    for i in range(n):
        scene, category = sample_scene(rng, opts), ours[i % len(ours)]
        mme_cat, name = MME_CATEGORY[category], f"{i:05d}.png"
        (tree / mme_cat).mkdir(parents=True, exist_ok=True)
        render_scene(scene, opts).save(tree / mme_cat / name)
        pair = [yes_no_question(category, scene, truth, rng) for truth in (True, False)]
        (tree / mme_cat / f"{i:05d}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in pair))
        for q, _ in pair:
            rows.append({"question_id": f"{mme_cat}/{name}", "image": f"{mme_cat}/{name}",
                         "text": q + "\n" + SHORT_ANSWER, "category": mme_cat})
    _write_jsonl(base / "llava_mme.jsonl", rows)
    return {MME_CATEGORY[c]: c for c in ours}


MMBENCH_COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                   "l2-category", "comment", "split")


def write_mmbench(root: Path, seed: int, n: int, opts: SynthOptions) -> int:
    """Multiple-choice TSV with base64 PNG images, categories cycling; shape questions have 3 options."""
    rng, base = _rng(seed, "mmbench"), root / "MGM-Eval" / "mmbench"
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "mmbench_dev_tiny.tsv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(MMBENCH_COLUMNS)
        for i in range(n):
            scene, category = sample_scene(rng, opts), CATEGORIES[i % len(CATEGORIES)]
            options, letter = mc_options(category, scene, rng)
            opts4 = options + [""] * (4 - len(options))  # an empty cell reads back as NaN: "no such option"
            image = base64.b64encode(_png_bytes(render_scene(scene, opts))).decode("ascii")
            l2 = "coarse_perception" if category in COARSE else "fine-grained_perception"
            writer.writerow([i, QUESTIONS[category], "", *opts4, letter, category, image, "mgm-tiny-synth", l2, "", "dev"])
    return n


# ----------------------------------------------------------------------------------------------- entry

def build_synth_data(out_dir: str | Path, seed: int = 0, n_train: int = 4000, n_pretrain: int | None = None,
                     n_eval: int = 200, turns: int = 3, image_size: int = 128, lr_size: int = 32,
                     fine_jitter: bool = True, force: bool = False) -> dict[str, object]:
    """Write (or reuse) the whole synthetic data set under `out_dir`; returns the meta dict.

    Args:
        out_dir: root folder (created), e.g. `data/MGM-Tiny`.
        seed: seed of every random choice; the same arguments give byte-identical files.
        n_train: stage-2 samples (about 10% text-only); n_pretrain: stage-1 captions (default n_train // 2).
        turns: question/answer turns per stage-2 image sample (different categories, 1-6).
        n_eval: questions per eval set (TextVQA, MMBench) and images of the MME set (two questions each).
        image_size: canvas side; use the model's `image_size_aux`. lr_size: the LR tower's input side.
        fine_jitter: move the digit and mark inside their panels (by whole cells).
        force: rewrite even if `out_dir/synth_meta.json` says the same options were used.

    Raises:
        UserError: sizes that break the halftone alignment, non-positive counts, or an unusable `out_dir`.
    """
    opts = SynthOptions(image_size=image_size, lr_size=lr_size, fine_jitter=fine_jitter)
    opts.check()
    n_pretrain = n_train // 2 if n_pretrain is None else n_pretrain
    for flag, value in (("--n-train", n_train), ("--n-pretrain", n_pretrain), ("--n-eval", n_eval)):
        if value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    if not 1 <= turns <= len(CATEGORIES):
        raise UserError(f"--turns must be between 1 and {len(CATEGORIES)}, got {turns}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root} exists and is not a folder")
    request = {"format_version": SYNTH_FORMAT_VERSION, "seed": seed, "n_train": n_train, "n_pretrain": n_pretrain,
               "n_eval": n_eval, "turns": turns, "options": asdict(opts)}
    meta_path = root / "synth_meta.json"
    if not force and meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict) and {k: old.get(k) for k in request} == request:
            return old
    start = time.perf_counter()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {root}: {exc.strerror or exc}") from None
    meta_path.unlink(missing_ok=True)  # a half-written set must never look complete
    pretrain = write_pretrain(root, seed, n_pretrain, opts)
    finetune = write_finetune(root, seed, n_train, opts, turns=turns)
    textvqa = write_textvqa(root, seed, n_eval, opts)
    mme = write_mme(root, seed, n_eval, opts)
    write_mmbench(root, seed, n_eval, opts)
    meta = {**request, "root": str(root.resolve()),
            "vocabulary": {c: list(_choices(c)) for c in CATEGORIES}, "coarse": list(COARSE), "fine": list(FINE),
            "counts": {"pretrain": pretrain, "finetune": finetune, "textvqa": n_eval, "mme_images": n_eval,
                       "mmbench": n_eval},
            "categories": {"textvqa": textvqa, "mme": mme, "mmbench_column": "category"},
            "build_seconds": round(time.perf_counter() - start, 2)}
    _write_json(meta_path, meta)
    return meta


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m mgm.zoo.synth`."""
    p = argparse.ArgumentParser(
        prog="python -m mgm.zoo.synth",
        description="Write the MGM-Tiny synthetic data set (stage-1 captions, stage-2 instructions, TextVQA/MME/"
                    "MMBench-style eval sets) from a seed: large coloured shapes visible at low resolution, "
                    "halftone digits and marks that only the high-resolution view can read.",
        epilog="The tree and the question forms are described in `python -m pydoc mgm.zoo.synth`.")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="root folder (e.g. data/MGM-Tiny)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--n-train", type=int, default=4000, help="stage-2 instruction samples (default 4000)")
    p.add_argument("--n-pretrain", type=int, default=None, help="stage-1 caption samples (default n-train / 2)")
    p.add_argument("--n-eval", type=int, default=200, help="questions per eval benchmark (default 200)")
    p.add_argument("--turns", type=int, default=3, help="question turns per stage-2 image sample (default 3)")
    p.add_argument("--image-size", type=int, default=128,
                   help="canvas side; set it to the model's image_size_aux (default 128)")
    p.add_argument("--lr-size", type=int, default=32, help="the low-res tower's input side (default 32)")
    p.add_argument("--no-jitter", action="store_true", help="draw the digit and the mark at a fixed place")
    p.add_argument("--force", action="store_true", help="rewrite even if DIR/synth_meta.json matches")
    return p


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, build (or reuse), say where the data is."""
    args = build_parser().parse_args(argv)
    meta = build_synth_data(args.out, seed=args.seed, n_train=args.n_train, n_pretrain=args.n_pretrain,
                            n_eval=args.n_eval, turns=args.turns, image_size=args.image_size, lr_size=args.lr_size,
                            fine_jitter=not args.no_jitter, force=args.force)
    counts = meta["counts"]
    print(f"synthetic data ready: {meta['root']} ({counts['pretrain']} captions, "  # type: ignore[index]
          f"{counts['finetune']['samples']} instructions, {meta['n_eval']} questions per eval set)", file=sys.stdout)  # type: ignore[index]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
