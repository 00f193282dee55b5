"""Send one test message through the serving stack and print the streamed answer (docs/original.md#serving).

    python -m mgm.serve.test_message --model-name MGM-2B --controller-address http://127.0.0.1:21001

Resolves a worker through the controller (unless --worker-address is given), sends a vicuna_v1 prompt
(temperature 0.7, stop = the template's `sep`) to `/worker_generate_stream` with the header
`User-Agent: LLaVA Client`, and prints the text as it streams in. Exits non-zero on an error chunk.
"""
from __future__ import annotations

import argparse
import os
import sys

import httpx

from mgm.errors import UserError, exit_on_user_error
from mgm.serve.protocol import iter_chunks
from mgm.serve.security import auth_headers
from mgm.program import program_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name("python -m mgm.serve.test_message"),
                                     description="Send one chat message to a model worker and print the answer.")
    parser.add_argument("--controller-address", default="http://localhost:21001",
                        help="the controller's base URL (default http://localhost:21001)")
    parser.add_argument("--worker-address", default=None,
                        help="talk to this worker directly instead of asking the controller")
    parser.add_argument("--model-name", default="facebook/opt-350m", help="model to ask for (default facebook/opt-350m)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    parser.add_argument("--message", default="Tell me a story with more than 1000 words.", help="the user message")
    parser.add_argument("--api-key", default=os.environ.get("MGM_API_KEY") or None,
                        help="the controller's client key, if it has one (default: $MGM_API_KEY)")
    parser.add_argument("--worker-api-key", default=os.environ.get("MGM_WORKER_API_KEY") or None,
                        help="the worker's key, if it has one (default: $MGM_WORKER_API_KEY, else --api-key)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each response (default 60)")
    return parser


def build_prompt(message: str) -> tuple[str, str]:
    """(vicuna_v1 prompt ending with the assistant role, its `sep` used as the stop string)."""
    from mgm.conversation import conv_templates  # imported here: the template module is heavy-ish

    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], message)
    # the original sent the prompt without the assistant turn; with it the model answers as assistant
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt(), conv.sep


def _post_json(client: httpx.Client, url: str, body: dict | None = None) -> dict:
    try:
        response = client.post(url, json=body)
    except httpx.HTTPError as exc:
        raise UserError(f"cannot reach {url} ({exc})") from None
    if response.status_code != 200:
        raise UserError(f"{url} answered HTTP {response.status_code}: {response.text[:300]}")
    return response.json() if response.content else {}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    headers = {"User-Agent": "LLaVA Client", **auth_headers(args.api_key)}
    with httpx.Client(headers=headers, timeout=args.timeout, trust_env=False) as client:
        if args.worker_address:
            worker_addr = args.worker_address.rstrip("/")
        else:
            controller = args.controller_address.rstrip("/")
            _post_json(client, controller + "/refresh_all_workers")
            models = sorted(_post_json(client, controller + "/list_models")["models"])
            print(f"Models: {models}")
            worker_addr = _post_json(client, controller + "/get_worker_address", {"model": args.model_name})["address"]
            print(f"worker_addr: {worker_addr}")
        if not worker_addr:
            raise UserError(f"--model-name {args.model_name!r}: no worker serves this model")

        prompt, stop = build_prompt(args.message)
        payload = {"model": args.model_name, "prompt": prompt, "max_new_tokens": args.max_new_tokens,
                   "temperature": 0.7, "stop": stop}
        print(prompt, end="", flush=True)
        shown = 0
        try:
            with client.stream("POST", worker_addr + "/worker_generate_stream", json=payload,
                               headers=auth_headers(args.worker_api_key or args.api_key)) as response:
                if response.status_code != 200:
                    raise UserError(f"{worker_addr} answered HTTP {response.status_code}: {response.read()[:300]!r}")
                for chunk in iter_chunks(response.iter_bytes()):
                    if chunk.get("error_code", 0) != 0:
                        print(f"\n{chunk.get('text', '')} (error_code: {chunk['error_code']})", file=sys.stderr)
                        raise SystemExit(1)
                    answer = chunk["text"][len(prompt):]  # each chunk repeats the prompt + all text so far
                    print(answer[shown:], end="", flush=True)
                    shown = len(answer)
        except httpx.HTTPError as exc:
            raise UserError(f"stream from {worker_addr} failed ({exc})") from None
        print()


if __name__ == "__main__":
    main()
