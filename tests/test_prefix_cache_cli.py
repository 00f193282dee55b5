"""`mgm chat` keeps its conversation's image features and KV between turns: the same answers as with the
caches off, and its cache flags are checked before the model loads."""
from __future__ import annotations

import io
import sys

import pytest
from PIL import Image

from mgm.serve import cli


@pytest.mark.parametrize("name", ["MGM-Tiny-Vicuna-HD", "MGM-Tiny-Mixtral"])
def test_cli_turns_are_identical_with_the_caches_off(tiny_zoo, tmp_path, name, monkeypatch, capsys):
    image = tmp_path / "img.png"
    Image.effect_mandelbrot((64, 48), (-2, -1.2, 1, 1.2), 40).convert("RGB").save(image)
    outputs = {}
    for label, flags in (("on", []), ("off", ["--no-prefix-cache", "--image-cache-mb", "0"])):
        monkeypatch.setattr(sys, "stdin", io.StringIO("What is in the image?\nAnd the colour?\nWhy?\n"))
        rc = cli.main(["--model-path", tiny_zoo["checkpoints"][name]["path"], "--image-file", str(image),
                       "--device", "cpu", "--temperature", "0", "--max-new-tokens", "8", "--debug", *flags])
        out = capsys.readouterr().out
        assert rc == 0 and out.count("'outputs':") == 3
        outputs[label] = out
    assert outputs["on"] == outputs["off"]


def test_cli_cache_sizes_are_checked_before_the_model_loads(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--model-path", str(tmp_path / "no-model"), "--prefix-cache-mb", "-3"])
    assert exc.value.code == 2 and "--prefix-cache-mb must be >= 0 (0 = off), got -3" in capsys.readouterr().err
