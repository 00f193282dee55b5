"""MathVista step 1: extract the final answer from each model response (rules, then an LLM judge).

Run from the repository root (original flags; the dashed spellings are accepted too):

    python mgm/eval/MathVista/extract_answer.py --output_file answers/MGM-7B/merge.jsonl \\
        [--response_label response] [--llm_engine gpt-4-0613 | --judge-model NAME] [--number -1] \\
        [--quick_extract] [--rerun] [--api_key KEY] [--api_base URL] [--save_every 10] [--output_label L] \\
        [--judge-cache PATH] [--max-retries 5]

Reads the runner's JSONL (or an earlier run's JSON dict) keyed by `pid`, fills `extraction` for the
problems that lack a valid one and writes the whole `{pid: problem}` dict back as JSON into the same
file, as the original did (or into `<file>_<label>.json...` with --output_label) — the raw JSONL is
first copied to `<file>.bak`. The judge is any OpenAI-compatible endpoint: --api_base/--api_key/
--judge-model or OPENAI_BASE_URL / OPENAI_API_KEY / MGM_JUDGE_MODEL; judged prompts are cached in
`<output file>.judge_cache.json`. Rules and prompt: see mgm.eval.mathvista_utils.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make the repository root importable without an install.
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from mgm.errors import exit_on_user_error  # noqa: E402
from mgm.eval.judge import JudgeClient, resolve_judge_config  # noqa: E402
from mgm.eval.mathvista_utils import load_results, run_extraction, save_results  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extract_answer.py", description="Extract MathVista answers from model "
                                "responses (rule-based first, then an OpenAI-compatible LLM judge).")
    p.add_argument("--output_file", "--output-file", default="answer.json",
                   help="runner output (JSONL or JSON dict keyed by pid); results are written back into it")
    p.add_argument("--response_label", default="response", help="key of the model response in each problem")
    p.add_argument("--llm_engine", "--judge-model", dest="llm_engine", default=None,
                   help="judge model name (default: $MGM_JUDGE_MODEL or gpt-4-0613)")
    p.add_argument("--number", type=int, default=-1, help="only the first N problems (-1: all)")
    p.add_argument("--quick_extract", action="store_true", help='also use the rule `The answer is "(.*)".`')
    p.add_argument("--rerun", action="store_true", help="re-extract problems that already have an extraction")
    p.add_argument("--api_key", "--api-key", dest="api_key", default=None,
                   help="judge API key (default: $OPENAI_API_KEY)")
    p.add_argument("--api_base", "--api-base", dest="api_base", default=None,
                   help="judge base URL, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL or OpenAI)")
    p.add_argument("--save_every", type=int, default=10, help="save the results every N problems")
    p.add_argument("--output_label", default="", help="write to <file>_<label>.json... instead of the input file")
    p.add_argument("--judge-cache", default=None, help="judge cache JSON (default: <output file>.judge_cache.json)")
    p.add_argument("--max-retries", type=int, default=5, help="judge retries per prompt (default 5)")
    return p


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    result_file = args.output_file
    output_file = result_file.replace(".json", f"_{args.output_label}.json") if args.output_label else result_file
    print(f"Reading {result_file}...")
    source = output_file if output_file != result_file and os.path.exists(output_file) else result_file
    results = load_results(source)

    client: list[JudgeClient] = []

    def judge(prompt: str) -> str:
        if not client:  # created on first use: rule-only runs need no endpoint or key
            cache = args.judge_cache or output_file + ".judge_cache.json"
            config = resolve_judge_config(args.api_base, args.api_key, args.llm_engine,
                                          max_retries=args.max_retries, cache_path=cache)
            client.append(JudgeClient(config))
        return client[0].complete(prompt)

    backed_up: set[str] = set()

    def save(res: dict) -> None:
        print(f"Saving results to {output_file}...")
        save_results(output_file, res, backed_up)
        print("Results saved.")

    run_extraction(results, args.response_label, args.number, args.quick_extract, args.rerun, judge, save,
                   max(1, args.save_every), where=source)
    return results


if __name__ == "__main__":
    main()
