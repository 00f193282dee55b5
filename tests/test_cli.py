"""`python -m mgm.serve.cli` answers on the tiny checkpoints of every family, piped and interactive."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from PIL import Image

from mgm.serve import cli

NAMES = ["MGM-Tiny-Vicuna", "MGM-Tiny-Vicuna-HD", "MGM-Tiny-LLaMA3", "MGM-Tiny-Gemma", "MGM-Tiny-Gemma-HD",
         "MGM-Tiny-Mistral", "MGM-Tiny-Mixtral", "MGM-Tiny-Yi"]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (48, 36), (220, 20, 20)).save(path)
    return str(path)


@pytest.mark.parametrize("name", NAMES)
def test_cli_piped_two_turns(tiny_zoo, image_file, name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is in the image?\nAnd the colour?\n"))
    rc = cli.main(["--model-path", tiny_zoo["checkpoints"][name]["path"], "--image-file", image_file,
                   "--device", "cpu", "--temperature", "0", "--max-new-tokens", "6", "--debug"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("'outputs':") == 2  # two turns answered
    assert out.rstrip().endswith("exit...")


def test_cli_llama3_uses_llama3_template(tiny_zoo, image_file, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    cli.main(["--model-path", tiny_zoo["checkpoints"]["MGM-Tiny-LLaMA3"]["path"], "--image-file", image_file,
              "--device", "cpu", "--temperature", "0", "--max-new-tokens", "3", "--debug"])
    out = capsys.readouterr().out
    assert "<|start_header_id|>user<|end_header_id|>\\n\\n<image>\\nhi<|eot_id|>" in out


def test_cli_subprocess_piped_and_bad_input(tiny_zoo, image_file, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ckpt = tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"]
    ok = subprocess.run([sys.executable, "-m", "mgm.serve.cli", "--model-path", ckpt, "--image-file", image_file,
                         "--device", "cpu", "--max-new-tokens", "4"], input="Describe it.\n", text=True,
                        capture_output=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "ASSISTANT:" in ok.stdout and "exit..." in ok.stdout
    assert "deprecated" not in ok.stdout + ok.stderr and "Warning" not in ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, "-m", "mgm.serve.cli", "--model-path", ckpt, "--image-file",
                          str(tmp_path / "nope.png"), "--device", "cpu"], input="x\n", text=True,
                         capture_output=True, env=env, timeout=300)
    assert bad.returncode != 0
    assert "nope.png" in bad.stderr and "Traceback" not in bad.stderr


def test_help_names_the_command_typed_and_the_ocr_backend(capsys):
    from mgm.__main__ import main as mgm_main

    with pytest.raises(SystemExit):
        mgm_main(["chat", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: mgm chat ") and "--ocr-backend {auto,rapidocr,paddle}" in out


@pytest.mark.parametrize("words", [["serve", "controller"], ["serve", "worker"], ["serve", "web"], ["export"]])
def test_every_subcommand_help_names_the_words_typed(capsys, words):
    from mgm.__main__ import main as mgm_main

    with pytest.raises(SystemExit):
        mgm_main([*words, "--help"])
    assert capsys.readouterr().out.startswith("usage: mgm " + " ".join(words) + " ")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m mgm.serve.cli ")


def test_cli_interactive_through_a_terminal(tiny_zoo, image_file):
    pexpect = pytest.importorskip("pexpect")
    ckpt = tiny_zoo["checkpoints"]["MGM-Tiny-Gemma"]["path"]
    child = pexpect.spawn(sys.executable, ["-m", "mgm.serve.cli", "--model-path", ckpt, "--image-file", image_file,
                                           "--device", "cpu", "--max-new-tokens", "4"],
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, encoding="utf-8", timeout=300)
    child.expect("user: ")
    child.sendline("What shape?")
    child.expect("model: ")
    child.expect("user: ")
    child.sendline("")
    child.expect("exit...")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("flags,message", [
    (["--max-new-tokens", "-5"], "--max-new-tokens must be >= 1, got -5"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--temperature", "-1"], "--temperature must be between 0 (greedy) and 2"),
    (["--temperature", "2.5"], "--temperature must be between 0 (greedy) and 2, got 2.5"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--load-8bit", "--load-4bit"], "mutually exclusive"),
])
def test_cli_flags_are_checked_before_the_model_loads(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # the model path does not exist: the flags are refused first
        cli.main(["--model-path", str(tmp_path / "no-model"), *flags])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_image_file_directory_and_non_image_say_what_they_are(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--model-path", str(tmp_path / "no-model"), "--image-file", str(tmp_path)])
    assert "is a directory" in capsys.readouterr().err
    from mgm.constants import MAX_IMAGE_PIXELS
    from mgm.data.image import open_image
    from mgm.errors import UserError
    from mgm.serve.security import DEFAULT_MAX_IMAGE_PIXELS

    assert DEFAULT_MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS == open_image.__defaults__[-1]  # one limit everywhere
    with pytest.raises(UserError, match="is a directory"):
        open_image(tmp_path)
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    with pytest.raises(UserError) as err:
        open_image(tmp_path / "notes.png")
    assert "notes.png" in str(err.value) and "BytesIO" not in str(err.value)


@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])
def test_cli_stdin_that_is_not_utf8_is_a_clear_error(tiny_zoo, monkeypatch, capsys, errors):
    # strict: a UTF-8 locale; surrogateescape: what Python uses for stdin under a C/POSIX locale
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 \xff\n"), encoding="utf-8",
                                                       errors=errors))
    with pytest.raises(SystemExit) as exc:
        cli.main(["--model-path", tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"], "--device", "cpu",
                  "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "standard input is not UTF-8 text" in err and "Traceback" not in err
