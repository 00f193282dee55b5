"""Shared pytest set-up: offline hub, quiet libraries, and the session-wide tiny model zoo."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> dict:
    """The tiny model zoo (built once per session; MGM_TEST_ZOO reuses a prebuilt one)."""
    from mgm.zoo.tiny import build_tiny_zoo

    prebuilt = os.environ.get("MGM_TEST_ZOO")
    if prebuilt and (Path(prebuilt) / "manifest.json").is_file():
        return json.loads((Path(prebuilt) / "manifest.json").read_text())
    return build_tiny_zoo(tmp_path_factory.mktemp("zoo"), seed=0)


@pytest.fixture(scope="session")
def loaded_models(tiny_zoo):
    """Cache of `load_pretrained_model` results by checkpoint name (float32, CPU)."""
    from mgm.model.builder import load_pretrained_model

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_pretrained_model(tiny_zoo["checkpoints"][name]["path"], None, name, device="cpu")
        return cache[name]

    return get
