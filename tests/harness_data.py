"""Small local benchmark data for the evaluation-toolkit adapter tests (lmms-eval, VLMEvalKit).

One set of questions about generated images, written in each format a tool reads: LLaVA-style JSONL
+ image files (mgm's runners), parquet with embedded images (lmms-eval tasks), MMBench-style TSV with
base64 images (VLMEvalKit and `mgm.eval.model_vqa_mmbench`).
"""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230)}
QUESTIONS = ["What colour is the square?", "Describe the picture.", "Is there a shape in the image?",
             "What is in the middle?", "Which colour dominates this image?", "Name the shape."]


def make_images(n: int) -> list[bytes]:
    """`n` PNG images: a coloured square on a grey background, size and place varying."""
    from PIL import Image, ImageDraw

    names = list(COLOURS)
    out = []
    for i in range(n):
        image = Image.new("RGB", (48 + 8 * i, 40 + 4 * i), (128, 128, 128))
        draw = ImageDraw.Draw(image)
        draw.rectangle([4 + i, 6, 30 + 2 * i, 32], fill=COLOURS[names[i % 3]])
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def questions(n: int = 6) -> list[dict]:
    """`{question_id, text, png, colour}` records (the colour is the square's)."""
    names = list(COLOURS)
    return [{"question_id": f"q{i}", "text": QUESTIONS[i % len(QUESTIONS)], "png": png, "colour": names[i % 3]}
            for i, png in enumerate(make_images(n))]


def write_llava_jsonl(records: list[dict], root: Path) -> tuple[Path, Path]:
    """question file + image folder for `python -m mgm.eval.model_vqa_loader`."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in records:
        (images / f"{r['question_id']}.png").write_bytes(r["png"])
        lines.append(json.dumps({"question_id": r["question_id"], "image": f"{r['question_id']}.png",
                                 "text": r["text"]}))
    path = root / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, images


def write_mmbench_tsv(records: list[dict], path: Path) -> Path:
    """An MMBench-format TSV (index, question, hint, A, B, C, answer, image as base64)."""
    import pandas as pd

    names = list(COLOURS)
    rows = []
    for i, r in enumerate(records):
        rows.append({"index": i, "question": r["text"], "hint": "A picture." if i % 2 else None,
                     "A": names[0], "B": names[1], "C": names[2], "answer": "ABC"[names.index(r["colour"])],
                     "category": "colour", "l2-category": "perception", "split": "dev",
                     "image": base64.b64encode(r["png"]).decode()})
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def run_mgm_runner(module: str, args: list[str], env: dict | None = None) -> list[dict]:
    """Run `python -m <module> <args>` (an mgm runner) and return its answers file's records."""
    answers = Path(args[args.index("--answers-file") + 1])
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]


def trim_at(text: str, stops: list[str]) -> str:
    """What a stop-string generation leaves of `text` (cut at each stop, then stripped)."""
    for s in stops:
        cut = text.find(s)
        if cut != -1:
            text = text[:cut]
    return text.strip()
