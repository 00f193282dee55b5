"""Register a running worker with a controller by hand (docs/original.md#serving).

    python -m mgm.serve.register_worker --controller-address http://127.0.0.1:21001 \
        --worker-name http://127.0.0.1:21002 [--check-heart-beat]

Sends `{worker_name, check_heart_beat, worker_status: null}` to `/register_worker`; the controller then
asks the worker for its status itself. A controller with `--worker-api-key` needs that key (`--api-key`
here). A worker registered without `--check-heart-beat` is polled by the controller instead, and dropped
when it stops answering.
"""
from __future__ import annotations

import argparse
import os

import httpx

from mgm.errors import UserError, exit_on_user_error
from mgm.serve.security import auth_headers
from mgm.program import program_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name("python -m mgm.serve.register_worker"),
                                     description="Register a running model worker with a controller.")
    parser.add_argument("--controller-address", default="http://127.0.0.1:21001",
                        help="the controller's base URL (default http://127.0.0.1:21001)")
    parser.add_argument("--worker-name", required=True,
                        help="the worker's base URL as the controller should reach it, e.g. http://127.0.0.1:21002")
    parser.add_argument("--check-heart-beat", action="store_true",
                        help="the worker sends heart beats and is dropped when they stop (default: the "
                             "controller polls its status and drops it when that fails)")
    parser.add_argument("--api-key", default=os.environ.get("MGM_WORKER_API_KEY") or None,
                        help="the worker key (the controller's --worker-api-key), if it has one "
                             "(default: $MGM_WORKER_API_KEY)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the controller (default 30)")
    return parser


def register(controller_address: str, worker_name: str, check_heart_beat: bool, api_key: str | None = None,
             timeout: float = 30.0) -> None:
    """POST the registration; raise UserError naming the controller on failure."""
    url = controller_address.rstrip("/") + "/register_worker"
    body = {"worker_name": worker_name, "check_heart_beat": check_heart_beat, "worker_status": None}
    try:
        response = httpx.post(url, json=body, headers=auth_headers(api_key), timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        raise UserError(f"--controller-address {controller_address}: cannot reach the controller ({exc})") from None
    if response.status_code != 200:
        raise UserError(f"registration of {worker_name} at {controller_address} failed: HTTP "
                        f"{response.status_code} {response.text[:300]}")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    register(args.controller_address, args.worker_name, args.check_heart_beat, args.api_key, args.timeout)
    print(f"registered {args.worker_name} at {args.controller_address}")


if __name__ == "__main__":
    main()
