"""`mgm export` of a checkpoint whose tower paths are relative: the error says where MGM_TOWER_ROOT must point.

The tiny zoo's Relative checkpoint records `model_zoo/OpenAI/<tower>` as released configs do. Pointing
MGM_TOWER_ROOT at the zoo root (the folder holding `OpenAI/`) finds nothing; the error must name the rule
(the folder that directly holds the tower folders, `.../OpenAI`), and following it must work.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def test_tower_root_rule_is_in_the_error_and_following_it_works(tiny_zoo, tmp_path, monkeypatch):
    from mgm.errors import UserError
    from mgm.model.export import export_self_contained

    source = Path(tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna-Relative"]["path"])
    towers = Path(tiny_zoo["towers"]["clip"]).parent  # the zoo's OpenAI/ folder
    ckpt = tmp_path / "ckpt" / source.name  # away from the zoo, so neither cwd nor the checkpoint finds them
    shutil.copytree(source, ckpt)
    monkeypatch.chdir(tmp_path)

    monkeypatch.setenv("MGM_TOWER_ROOT", str(towers.parent))  # the zoo root: the usual wrong guess
    with pytest.raises(UserError) as caught:
        export_self_contained(ckpt, tmp_path / "out")
    message = str(caught.value)
    assert "MGM_TOWER_ROOT=DIR looks for DIR/model_zoo/OpenAI/clip-vit-tiny-patch4-32" in message
    assert "directly holds 'clip-vit-tiny-patch4-32' (e.g. .../OpenAI)" in message
    assert not (tmp_path / "out").exists()

    monkeypatch.setenv("MGM_TOWER_ROOT", str(towers))  # what the message says
    out = export_self_contained(ckpt, tmp_path / "out")
    assert sorted(p.name for p in (Path(out) / "towers").iterdir()) == ["clip-vit-tiny-patch4-32",
                                                                      "openclip-convnext-tiny"]
