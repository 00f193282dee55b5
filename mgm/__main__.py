"""The `mgm` command (also `python -m mgm`): one entry point for the package's tools.

Each subcommand forwards its remaining arguments to the tool's own `main(argv)`; the tool is imported
only when its subcommand runs, so `mgm --help` is instant and a missing optional extra affects only
the subcommands that need it. The original module entry points (`python -m mgm.serve.cli`, ...) keep
working unchanged.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# (subcommand words, module, what it does). Longest word sequences are matched first.
COMMANDS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("eval",), "mgm.eval.cli", "answer and score benchmarks: mgm eval textvqa --model-path PATH (--list)"),
    (("zoo", "tiny"), "mgm.zoo.tiny", "build the tiny random model zoo: mgm zoo tiny --out DIR"),
    (("export",), "mgm.model.export", "self-contained checkpoint folder (towers, processor, card): mgm export SRC OUT"),
    (("chat",), "mgm.serve.cli", "chat with a checkpoint in the terminal (python -m mgm.serve.cli)"),
    (("train",), "mgm.train.train", "train (python mgm/train/train.py flags)"),
    (("inspect",), "mgm.data.inspect", "show one training sample as the model sees it (prompt, ids, labels)"),
    (("check",), "mgm.data.check", "validate a training data file before a long run"),
    (("kernels",), "mgm.model.kernels_cli", "this CPU, its ISA flags and the linear kernel chosen per dtype (--reprobe)"),
    (("serve", "controller"), "mgm.serve.controller", "start the controller (python -m mgm.serve.controller)"),
    (("serve", "worker"), "mgm.serve.model_worker", "start a model worker (python -m mgm.serve.model_worker)"),
    (("serve", "web"), "mgm.serve.gradio_web_server", "start the web demo (python -m mgm.serve.gradio_web_server)"),
)


# Commands whose module loads torch, gradio or fastapi when imported: `--help` is answered by this light
# parser first ("module:function"), so it never waits for those imports.
HELP_PARSERS: dict[tuple[str, ...], str] = {
    ("train",): "mgm.train.help:build_help_parser",
    ("serve", "worker"): "mgm.serve.worker_settings:build_parser",
    ("serve", "web"): "mgm.serve.web_args:build_parser",
}


def usage() -> str:
    lines = ["usage: mgm <command> [arguments...]", "", "commands:"]
    for words, _, help_text in COMMANDS:
        lines.append(f"  {' '.join(words):18s} {help_text}")
    lines += ["", "Run `mgm <command> --help` for the command's own options."]
    return "\n".join(lines)


def _match(argv: list[str]) -> tuple[tuple[str, ...], str] | None:
    for words, module, _ in sorted(COMMANDS, key=lambda c: -len(c[0])):
        if tuple(argv[: len(words)]) == words:
            return words, module
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `mgm <command> ...`; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    found = _match(args)
    if found is None and args[0] == "zoo":  # `mgm zoo --out DIR` = `mgm zoo tiny --out DIR`
        found = (("zoo",), "mgm.zoo.tiny")
    if found is None:
        groups = sorted({c[0][0] for c in COMMANDS})
        near = [" ".join(c[0]) for c in COMMANDS if c[0][0] == args[0]]
        hint = f"; did you mean: {', '.join(near)}" if near else f"; commands: {', '.join(groups)}"
        print(f"error: unknown command {' '.join(args[:2])!r}{hint} (mgm --help)", file=sys.stderr)
        return 2
    words, module_name = found
    rest = args[len(words):]
    if words in HELP_PARSERS and any(a in ("-h", "--help") for a in rest):
        parser_module, _, factory = HELP_PARSERS[words].partition(":")
        saved, sys.argv[0] = sys.argv[0], " ".join(("mgm", *words))  # the usage line names the words typed
        try:
            getattr(importlib.import_module(parser_module), factory)().parse_known_args(rest)  # prints, exits
        finally:
            sys.argv[0] = saved
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            print(f"error: `mgm {' '.join(words)}` is not available: module {module_name} is missing "
                  "from this installation", file=sys.stderr)
        else:
            print(f"error: `mgm {' '.join(words)}` needs the package {exc.name!r}; install the matching "
                  "extra, e.g. pip install 'mgm[all]'", file=sys.stderr)
        return 2
    entry = getattr(module, "main", None)
    if entry is None:
        print(f"error: {module_name} has no main(); cannot run `mgm {' '.join(words)}`", file=sys.stderr)
        return 2
    # `--help` of the tool then shows `mgm chat`, not the module path (see mgm.program).
    saved, sys.argv[0] = sys.argv[0], " ".join(("mgm", *words))
    try:
        result = entry(rest)
    finally:
        sys.argv[0] = saved
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
