"""The web demo's own login (issue 21, case 5) and the CLI's Ctrl-C / `<image>` / device-file handling
(case 7): a real Gradio demo on 127.0.0.1 in front of a keyed controller, driven by gradio_client."""
from __future__ import annotations

import pytest
from serving_helpers import ServerThread, free_port

from mgm.errors import UserError
from mgm.serve.controller import ControllerSettings, create_app
from mgm.serve.demo_auth import DEFAULT_USER, parse_credentials, resolve_demo_auth
from mgm.serve.gradio_web_server import WebSettings, launch, parse_settings

pytestmark = pytest.mark.timeout(120)


def test_the_login_is_on_by_default_beyond_loopback_or_with_a_controller_key(tmp_path):
    said: list[str] = []
    for host, share, key in (("0.0.0.0", False, None), ("127.0.0.1", True, None), ("127.0.0.1", False, "k")):
        pairs = resolve_demo_auth(None, host=host, share=share, api_key=key, announce=said.append)
        assert pairs is not None and pairs[0][0] == DEFAULT_USER and len(pairs[0][1]) >= 16
        assert pairs[0][1] in said[-1]
    assert resolve_demo_auth(None, host="127.0.0.1", share=False, api_key=None) is None
    assert resolve_demo_auth("none", host="0.0.0.0", share=False, api_key="k") is None
    assert resolve_demo_auth("ann:pw:with:colons", host="0.0.0.0", share=False, api_key=None) == \
        [("ann", "pw:with:colons")]
    users = tmp_path / "users.txt"
    users.write_text("# demo users\nann:one\n\nbob:two\n")
    assert parse_credentials(str(users)) == [("ann", "one"), ("bob", "two")]
    users.write_text("ann\n")
    with pytest.raises(UserError, match="line 1"):
        parse_credentials(str(users))
    with pytest.raises(UserError, match="neither"):
        parse_credentials(str(tmp_path / "missing"))
    assert parse_settings(["--demo-auth", "a:b"]).demo_auth == "a:b"


def test_a_demo_in_front_of_a_keyed_controller_asks_for_its_login(tmp_path):
    from gradio_client import Client

    ctrl = ServerThread(create_app(ControllerSettings(api_key="client-key")))
    port = free_port()
    demo = launch(WebSettings(controller_url=ctrl.url, port=port, log_dir=str(tmp_path), api_key="client-key",
                              demo_auth="ann:secret-pw"), prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        with pytest.raises(Exception):  # noqa: B017 (gradio_client raises different types across versions)
            Client(url, verbose=False)
        with pytest.raises(Exception):  # noqa: B017
            Client(url, auth=("ann", "wrong"), verbose=False)
        client = Client(url, auth=("ann", "secret-pw"), verbose=False)
        assert client.view_api(print_info=False, return_format="dict") is not None
    finally:
        demo.close()
        ctrl.stop()


# --- the CLI chat ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vicuna(tmp_path_factory):
    from serving_helpers import build_zoo, model_path

    return model_path(build_zoo(tmp_path_factory))


def _chat(path: str, stdin, monkeypatch, capsys, *extra: str):
    import sys

    from mgm.serve import cli

    monkeypatch.setattr(sys, "stdin", stdin)
    rc = cli.main(["--model-path", path, "--device", "cpu", "--temperature", "0", "--max-new-tokens", "8",
                   "--debug", *extra])
    return rc, capsys.readouterr()


def test_cli_refuses_an_image_tag_in_the_text_for_that_turn_only(tiny_vicuna, monkeypatch, capsys):
    import io

    rc, out = _chat(tiny_vicuna, io.StringIO("look at <image> please\nWhat colour?\n"), monkeypatch, capsys)
    assert rc == 0 and out.out.count("'outputs':") == 1  # the second question was answered
    assert "may not contain <image>" in out.err and "Traceback" not in out.err


class _InterruptingStdin:
    """Standard input whose user presses Ctrl-C at the `at`-th prompt (KeyboardInterrupt, as Python raises)."""

    def __init__(self, lines: list[str], at: int) -> None:
        self.lines, self.at, self.calls = lines, at, 0

    def readline(self) -> str:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.lines.pop(0) if self.lines else ""

    def isatty(self) -> bool:
        return False


def test_cli_ctrl_c_at_the_prompt_ends_without_a_traceback(tiny_vicuna, monkeypatch, capsys):
    rc, out = _chat(tiny_vicuna, _InterruptingStdin(["hi\n"], at=2), monkeypatch, capsys)
    assert rc == 0 and out.out.count("'outputs':") == 1 and out.out.rstrip().endswith("exit...")


def test_cli_ctrl_c_while_answering_stops_that_answer_and_keeps_the_conversation(tiny_vicuna, monkeypatch, capsys):
    """Ctrl-C arrives while the first answer is printed (the terminal raises it wherever the main thread
    is: here in the print of the first piece); the second question is answered in the same conversation."""
    import builtins
    import io

    real_print = builtins.print
    state = {"armed": True}

    def print_with_ctrl_c(*args, **kwargs):
        if state["armed"] and kwargs.get("end") == "" and args and args[0] and "ASSISTANT" not in str(args[0]):
            state["armed"] = False
            raise KeyboardInterrupt
        return real_print(*args, **kwargs)

    monkeypatch.setattr(builtins, "print", print_with_ctrl_c)
    rc, out = _chat(tiny_vicuna, io.StringIO("first question\nsecond question\n"), monkeypatch, capsys)
    assert rc == 0 and not state["armed"]
    assert "[answer interrupted" in out.out and "Traceback" not in out.err
    last = out.out.strip().splitlines()
    assert any("first question" in line and "second question" in line for line in last)  # one conversation


def test_cli_names_a_device_file_as_such(capsys):
    from mgm.serve import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--model-path", "unused", "--image-file", "/dev/zero"])
    assert exit_info.value.code == 2 and "not a regular file" in capsys.readouterr().err
