"""The web demo's command line (`python -m mgm.serve.gradio_web_server --help`).

Kept apart from the demo itself so that `--help` and flag errors answer without loading gradio.
"""
from __future__ import annotations

import argparse
import os

from mgm.program import program_name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("python -m mgm.serve.gradio_web_server"),
                                description="Run the MGM web demo (Gradio) in front of a controller.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: Gradio's, 7860 or the next free one)")
    p.add_argument("--controller-url", "--controller", default="http://127.0.0.1:21001",
                   help="the controller's URL (default http://127.0.0.1:21001)")
    p.add_argument("--concurrency-count", type=int, default=16, help="chats answered at once (default 16)")
    p.add_argument("--model-list-mode", choices=("once", "reload"), default="once",
                   help="once: list models at start (?model=NAME picks one); reload: on every page load")
    p.add_argument("--share", action="store_true", help="also publish a public gradio.live link")
    p.add_argument("--moderate", action="store_true", help="check inputs with OpenAI moderation (OPENAI_API_KEY)")
    p.add_argument("--embed", action="store_true", help="hide the title and terms (for embedding)")
    p.add_argument("--api-key", default=os.environ.get("MGM_API_KEY"),
                   help="the controller's client key, if it has one (default: $MGM_API_KEY)")
    p.add_argument("--worker-api-key", default=os.environ.get("MGM_WORKER_API_KEY"),
                   help="the workers' key, if they have one: the demo streams from workers directly, as the "
                        "original (default: $MGM_WORKER_API_KEY, else --api-key)")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds to wait for the next stream chunk from a worker (default 30)")
    p.add_argument("--log-dir", default=None, help="folder for logs, chat records and images (default: $MGM_LOGDIR, "
                                                   "else ~/.local/state/mgm/logs)")
    p.add_argument("--demo-auth", default=None,
                   help="the demo's own login: user:password, or a file with one user:password per line; "
                        "'none' turns it off. Default: on whenever --host is not loopback, --share is set or "
                        "--api-key is given, with a password made up and printed on stderr at start")
    return p
