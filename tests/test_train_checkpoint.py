"""Checkpoint bookkeeping without a model: where mm_projector.bin goes, which folders can be resumed from."""
from __future__ import annotations

import json

import pytest

from mgm.errors import UserError
from mgm.train.checkpoint import adapter_path, find_resumable_checkpoint, resolve_resume, resumable_reason


def test_adapter_path_follows_the_original_rule(tmp_path):
    assert adapter_path(tmp_path / "run", final=True) == tmp_path / "run" / "mm_projector.bin"
    assert adapter_path(tmp_path / "checkpoint-7", final=False) == tmp_path / "checkpoint-7" / "mm_projector.bin"
    assert adapter_path(tmp_path / "checkpoint-7", final=True) == tmp_path / "mm_projector" / "checkpoint-7.bin"


def _folder(path, *files, dirs=()):
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_text("{}" if name.endswith(".json") else "x")
    for name in dirs:
        (path / name).mkdir()
    return path


def test_resumable_reason(tmp_path):
    full = _folder(tmp_path / "a", "trainer_state.json", "optimizer.pt", "scheduler.pt", "model.safetensors")
    ours_stage1 = _folder(tmp_path / "b", "trainer_state.json", "optimizer.pt", "scheduler.pt", "mm_projector.bin")
    deepspeed = _folder(tmp_path / "c", "trainer_state.json", dirs=["global_step10"])
    original_stage1 = _folder(tmp_path / "d", "config.json", "mm_projector.bin")
    final_stage1 = _folder(tmp_path / "e", "config.json", "mm_projector.bin", "trainer_state.json")
    no_optimizer = _folder(tmp_path / "f", "trainer_state.json", "model.safetensors")
    assert resumable_reason(full) is None and resumable_reason(ours_stage1) is None
    assert resumable_reason(deepspeed) is None
    assert "stage-1 adapter folder" in resumable_reason(original_stage1)
    assert "stage-1 adapter folder" in resumable_reason(final_stage1)
    assert "no optimizer state" in resumable_reason(no_optimizer)


def test_latest_resumable_checkpoint_is_chosen(tmp_path):
    out = tmp_path / "run"
    _folder(out / "checkpoint-2", "trainer_state.json", "optimizer.pt", "model.safetensors")
    _folder(out / "checkpoint-10", "trainer_state.json", "optimizer.pt", "model.safetensors")
    _folder(out / "checkpoint-12", "config.json", "mm_projector.bin")  # original-style stage-1 save
    folder, skipped = find_resumable_checkpoint(out)
    assert folder == out / "checkpoint-10" and len(skipped) == 1 and "checkpoint-12" in skipped[0]
    assert resolve_resume(None, out) == out / "checkpoint-10"
    assert resolve_resume("True", out) == out / "checkpoint-10"
    assert resolve_resume("False", out) is None
    assert resolve_resume(str(out / "checkpoint-2"), out) == out / "checkpoint-2"
    with pytest.raises(UserError, match="cannot be resumed"):
        resolve_resume(str(out / "checkpoint-12"), out)
    with pytest.raises(UserError, match="no resumable checkpoint"):
        resolve_resume("True", tmp_path / "empty")
    assert resolve_resume(None, tmp_path / "empty") is None
    json.dumps(skipped)  # plain strings, fit for logs
