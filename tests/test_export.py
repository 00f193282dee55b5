"""`mgm export`: a self-contained folder, moved away from its towers, answers identically; and it
converts back to the original layout bit-exactly."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import mgm.model  # noqa: F401  (registers the Auto classes)

NAMES = ["MGM-Tiny-Vicuna", "MGM-Tiny-Vicuna-Bin", "MGM-Tiny-Vicuna-Perturbed", "MGM-Tiny-Vicuna-Relative",
         "MGM-Tiny-Gemma-HD"]
MAX_NEW = 10


def _image() -> Image.Image:
    img = Image.new("RGB", (40, 52), (20, 120, 40))
    img.paste((250, 250, 250), (10, 10, 30, 25))
    return img


def _answer(path: str | Path) -> tuple[list[int], dict]:
    """Greedy new tokens of load_pretrained_model + engine, and which tower weights were used."""
    from mgm.conversation import get_template, template_for_model_config
    from mgm.model.builder import load_pretrained_model
    from mgm.serve.engine import GenerationParams, InferenceEngine, Request

    tokenizer, model, image_processor, context_len = load_pretrained_model(str(path), None, None, device="cpu")
    conv = get_template(template_for_model_config(model.config, tokenizer))
    conv.append_message(conv.roles[0], "<image>\nWhat do you see?")
    conv.append_message(conv.roles[1], None)
    engine = InferenceEngine(tokenizer, model, image_processor, context_len)
    request = Request(conv.get_prompt(), [_image()], GenerationParams(temperature=0.0, max_new_tokens=MAX_NEW))
    return engine.generate_ids([request])[0].tolist(), dict(model.tower_weight_sources)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A private zoo; references answered; every checkpoint exported, moved, and the tower folders deleted."""
    from mgm.__main__ import main as mgm_main
    from mgm.zoo.tiny import build_tiny_zoo

    root = tmp_path_factory.mktemp("export")
    zoo = build_tiny_zoo(root / "zoo", seed=0, families=["vicuna", "gemma"])
    towers = Path(zoo["towers"]["clip"]).parent
    mp = pytest.MonkeyPatch()
    mp.setenv("MGM_TOWER_ROOT", str(towers))  # finds the Relative checkpoint's "model_zoo/OpenAI/..." towers
    sources = {name: Path(zoo["checkpoints"][name]["path"]) for name in NAMES}
    references = {name: _answer(path) for name, path in sources.items()}
    for name, path in sources.items():
        assert mgm_main(["export", str(path), str(root / "first" / name)]) == 0
    mp.undo()
    shutil.move(str(root / "first"), str(root / "elsewhere"))
    shutil.rmtree(towers)
    return {"sources": sources, "references": references, "moved": root / "elsewhere", "root": root}


@pytest.mark.parametrize("name", NAMES)
def test_moved_export_answers_identically_with_mgm_loader(exported, name):
    folder = exported["moved"] / name
    config = json.loads((folder / "config.json").read_text())
    assert config["mm_vision_tower"].startswith("towers/") and config["mm_vision_tower_aux"].startswith("towers/")
    assert _answer(folder) == exported["references"][name]


@pytest.mark.parametrize("name", ["MGM-Tiny-Vicuna-Perturbed", "MGM-Tiny-Gemma-HD"])
def test_moved_export_answers_identically_with_auto_classes(exported, name):
    from transformers import AutoImageProcessor, pipeline

    from mgm.processing import MGMImageProcessor, MGMProcessor

    folder = exported["moved"] / name
    assert isinstance(AutoImageProcessor.from_pretrained(folder), MGMImageProcessor)
    pipe = pipeline("image-text-to-text", model=str(folder))
    assert isinstance(pipe.processor, MGMProcessor)
    messages = [{"role": "user", "content": [{"type": "image", "image": _image()},
                                             {"type": "text", "text": "What do you see?"}]}]
    result = pipe(text=messages, max_new_tokens=MAX_NEW, generate_kwargs={"do_sample": False}, return_tensors=True)
    eos = pipe.model.generation_config.eos_token_id
    eos = {pipe.processor.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])}
    expected = _until(exported["references"][name][0], eos)
    assert expected and _until(result[0]["generated_token_ids"].tolist(), eos) == expected


def _until(tokens: list[int], eos: set) -> list[int]:
    return tokens[: next((i for i, t in enumerate(tokens) if t in eos), len(tokens))]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from mgm.model.checkpoint_files import CheckpointFiles

    files = CheckpointFiles(folder)
    return files.load(files.keys())


@pytest.mark.parametrize("name", NAMES)
def test_original_layout_round_trip_is_bit_exact(exported, name):
    from mgm.model.export import main as export_main

    source = exported["sources"][name]
    back = exported["root"] / "back" / name
    assert export_main([str(exported["moved"] / name), str(back), "--layout", "original"]) == 0
    assert sorted(p.name for p in back.iterdir()) == sorted(p.name for p in source.iterdir() if p.is_file())
    for file in source.iterdir():
        assert (back / file.name).read_bytes() == file.read_bytes(), file.name
    assert json.loads((back / "config.json").read_text()) == json.loads((source / "config.json").read_text())
    original, restored = _tensors(source), _tensors(back)
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)


def test_original_layout_with_towers_to_answers_identically(exported, tmp_path, monkeypatch):
    from mgm.model.export import export_original

    name = "MGM-Tiny-Vicuna-Relative"  # recorded tower paths "model_zoo/OpenAI/...", found by folder name
    back = export_original(exported["moved"] / name, tmp_path / name, towers_to=tmp_path / "towers")
    assert sorted(p.name for p in (tmp_path / "towers").iterdir()) == ["clip-vit-tiny-patch4-32",
                                                                       "openclip-convnext-tiny"]
    monkeypatch.setenv("MGM_TOWER_ROOT", str(tmp_path / "towers"))
    assert _answer(back) == exported["references"][name]


def test_export_refusals(exported, tmp_path):
    from mgm.errors import UserError
    from mgm.model.export import export_original, export_self_contained

    moved = exported["moved"] / "MGM-Tiny-Vicuna"
    with pytest.raises(UserError, match="already a self-contained export"):
        export_self_contained(moved, tmp_path / "again")
    with pytest.raises(UserError, match="not a self-contained export"):
        export_original(exported["sources"]["MGM-Tiny-Vicuna"], tmp_path / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        export_original(moved, tmp_path / "busy")
    with pytest.raises(UserError, match="source folder"):
        export_original(moved, moved.parent)
    pretrain = exported["sources"]["MGM-Tiny-Vicuna"].parent / "MGM-Tiny-Vicuna-Pretrain"
    with pytest.raises(UserError, match="no model weights"):
        export_self_contained(pretrain, tmp_path / "pre")
    assert not (tmp_path / "pre").exists() and not list(tmp_path.glob(".pre.*"))
