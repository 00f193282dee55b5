"""Helpers shared by the training and data tests: the tiny zoo (built once per session), a small
synthetic image/conversation data set, and the common training flags. Also checks the data set itself.

Test modules import this one (`from test_train_support import ...`); pytest puts tests/ on sys.path.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 190, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
SHAPES = ("circle", "square")


def tiny_zoo(tmp_path_factory) -> dict:
    """Manifest of the tiny zoo under the session's base temp folder (built by the first caller only)."""
    from mgm.zoo.tiny import build_tiny_zoo

    return build_tiny_zoo(tmp_path_factory.getbasetemp() / "mgm_train_zoo" / "model_zoo", seed=0)


def draw(path: Path, color: str, shape: str, size: tuple[int, int]) -> None:
    image = Image.new("RGB", size, (255, 255, 255))
    pen = ImageDraw.Draw(image)
    box = [size[0] // 5, size[1] // 5, size[0] * 4 // 5, size[1] * 4 // 5]
    (pen.ellipse if shape == "circle" else pen.rectangle)(box, fill=COLORS[color])
    image.save(path)


def make_dataset(root: Path, n: int = 24, seed: int = 0) -> Path:
    """Write root/{images/, stage1.json, stage2.json, stage2.jsonl}: captions for stage 1; for stage 2 two-turn
    image questions, a text-only sample every 4th, and one two-image sample."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    stage1, stage2 = [], []
    for i in range(n):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        name = f"images/{i:04d}.png"
        draw(root / name, color, shape, (rng.choice([40, 64, 80]), 64))
        stage1.append({"id": f"cap-{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": f"a {color} {shape}"}]})
        stage2.append({"id": f"qa-{i}", "image": name, "conversations": [
            {"from": "human", "value": "What color is the shape?\n<image>"}, {"from": "gpt", "value": color},
            {"from": "human", "value": "What shape is it?"}, {"from": "gpt", "value": shape}]})
        if i % 4 == 0:
            stage2.append({"id": f"text-{i}", "conversations": [
                {"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "hello there"}]})
    stage2.append({"id": "pair-0", "image": ["images/0000.png", "images/0001.png"], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nAre these the same?"}, {"from": "gpt", "value": "no"}]})
    (root / "stage1.json").write_text(json.dumps(stage1, indent=1))
    (root / "stage2.json").write_text(json.dumps(stage2))
    (root / "stage2.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stage2))
    return root


def base_flags(zoo: dict, data: Path, out: Path, *, family: str = "vicuna", aux: bool = True) -> list[str]:
    """Flags every tiny run shares (tiny towers, fp32, no reporting, in-process data loading)."""
    flags = ["--model_name_or_path", zoo["llms"][family], "--vision_tower", zoo["towers"]["clip"],
             "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
             "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False", "--image_size_aux", "64",
             "--image_folder", str(data), "--output_dir", str(out), "--report_to", "none",
             "--dataloader_num_workers", "0", "--model_max_length", "256", "--logging_steps", "1",
             "--disable_tqdm", "True", "--per_device_train_batch_size", "4"]
    if aux:
        flags += ["--vision_tower_aux", zoo["towers"]["convnext"]]
    return flags


def test_make_dataset_writes_the_layout(tmp_path):
    root = make_dataset(tmp_path, n=8)
    stage1 = json.loads((root / "stage1.json").read_text())
    stage2 = json.loads((root / "stage2.json").read_text())
    lines = (root / "stage2.jsonl").read_text().splitlines()
    assert len(stage1) == 8 and len(stage2) == 8 + 2 + 1 and len(lines) == len(stage2)
    assert all((root / s["image"]).is_file() for s in stage1)
    assert sum("image" not in s for s in stage2) == 2
    assert [json.loads(line) for line in lines] == stage2
