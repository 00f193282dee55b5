"""`mgm eval <benchmark>... --model-path P`: answer and score benchmarks without the shell scripts.

Does what `scripts/<family>/eval/<benchmark>.sh` does — run the answer runner (resumable, batched),
merge the shards, score — for one or several benchmarks with ONE model load. Paths default to the
original layout (`--data-root ./data/MGM-Eval`, `--work-dir ./work_dirs`; see `mgm.eval.benchmarks`).

    mgm eval textvqa mme --model-path work_dirs/MGM/MGM-7B-HD
    mgm eval mmmu --model-path /tmp/zoo/MGM/MGM-Tiny-Vicuna --data-root /tmp/tiny-bench --device cpu
    mgm eval --list

The checkpoint name used in answer paths (CKPT of the scripts) is the model path relative to
--work-dir (e.g. `MGM/MGM-7B-HD`), else its folder name; --ckpt overrides it. The conversation
template comes from the model config (gemma, mistral_instruct, llama_3, chatml_direct or vicuna_v1)
unless --conv-mode is given. With --num-chunks N > 1 and GPUs, one process per shard runs on its own
GPU (round robin); on CPU the shards run one after another in this process. MathVista extraction
calls an OpenAI-compatible judge (--api-base/--api-key/--judge-model or OPENAI_BASE_URL/
OPENAI_API_KEY/MGM_JUDGE_MODEL) for answers its rules cannot read.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mgm.errors import UserError, exit_on_user_error
from mgm.eval.benchmarks import BENCHMARKS, Benchmark, get_benchmark

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder holding the mgm package (checkout or site-packages)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mgm eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmarks", nargs="*", metavar="BENCHMARK", help=f"one or more of: {', '.join(BENCHMARKS)}")
    p.add_argument("--list", action="store_true", help="list the benchmarks and their paths, then exit")
    p.add_argument("--model-path", help="MGM checkpoint folder")
    p.add_argument("--model-base", default=None, help="base LLM for projector-only or LoRA folders")
    p.add_argument("--data-root", default="./data/MGM-Eval", help="benchmark data (default ./data/MGM-Eval)")
    p.add_argument("--work-dir", default="./work_dirs", help="where answers/results go (default ./work_dirs)")
    p.add_argument("--ckpt", default=None, help="checkpoint name in answer paths (default: from --model-path)")
    p.add_argument("--conv-mode", default=None, help="conversation template (default: from the model config)")
    p.add_argument("--split", default=None, help="MMBench TSV name (default mmbench_dev_20230712)")
    p.add_argument("--batch-size", type=int, default=None, help="questions per generate call (default: automatic)")
    p.add_argument("--num-chunks", type=int, default=1, help="shards (default 1)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy), as the scripts")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override the runner's answer length limit")
    p.add_argument("--load-8bit", action="store_true", help="quantise the LLM to 8 bit")
    p.add_argument("--limit", type=int, default=None, help="answer at most N missing questions per shard (smoke tests)")
    p.add_argument("--overwrite", action="store_true", help="discard existing answers instead of resuming")
    p.add_argument("--no-score", action="store_true", help="only produce the answers")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--api-base", default=None, help="MathVista judge endpoint (OpenAI-compatible)")
    p.add_argument("--api-key", default=None, help="MathVista judge API key")
    p.add_argument("--judge-model", default=None, help="MathVista judge model name")
    return p


def ckpt_name(model_path: str, work_dir: str) -> str:
    """The scripts' CKPT for a model path: relative to the work folder when inside it, else the folder name."""
    path = Path(os.path.expanduser(model_path)).resolve()
    try:
        return path.relative_to(Path(os.path.expanduser(work_dir)).resolve()).as_posix()
    except ValueError:
        return path.name


def default_conv_mode(model_path: str) -> str:
    """The template of the checkpoint's `ModelProfile` (from its config and tokenizer, no weights read)."""
    from mgm.profile import checkpoint_profile

    return checkpoint_profile(model_path).template


def runner_argv(bench: Benchmark, paths: dict, args: argparse.Namespace, conv_mode: str) -> list[str]:
    """Runner flags for one benchmark (without --answers-file / shard flags)."""
    values = {"data": args.data_root, "work": args.work_dir}
    argv = ["--model-path", args.model_path, "--conv-mode", conv_mode, "--temperature", str(args.temperature),
            "--device", args.device]
    if args.model_base:
        argv += ["--model-base", args.model_base]
    if paths["question_file"]:
        argv += ["--question-file", paths["question_file"]]
    if paths["image_folder"]:
        argv += ["--image-folder", paths["image_folder"]]
    argv += [a.format(**values) for a in bench.runner_args]
    if args.batch_size:
        argv += ["--batch-size", str(args.batch_size)]
    if args.max_new_tokens:
        argv += ["--max_new_tokens", str(args.max_new_tokens)]
    if args.load_8bit:
        argv += ["--load_8bit", "True"]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    if args.overwrite:
        argv += ["--overwrite"]
    if args.no_progress:
        argv += ["--no-progress"]
    return argv


def _gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def run_answers(bench: Benchmark, paths: dict, args: argparse.Namespace, conv_mode: str, model) -> None:
    """Run the benchmark's runner (all shards) and merge chunked answers into merge.jsonl."""
    module = importlib.import_module(bench.runner)
    base = runner_argv(bench, paths, args, conv_mode)
    if not bench.chunked:
        module.run(base + ["--answers-file", paths["answers"]], model=model)
        return
    n = max(1, args.num_chunks)
    shard_files = [os.path.join(paths["answers"], f"{n}_{i}.jsonl") for i in range(n)]
    gpus = _gpus() if args.device in ("auto", "cuda") else []
    if n > 1 and gpus:
        procs = []
        for i, shard in enumerate(shard_files):
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpus[i % len(gpus)])
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")]))
            cmd = [sys.executable, "-m", bench.runner, *base, "--answers-file", shard, "--num-chunks", str(n),
                   "--chunk-idx", str(i), "--no-progress"]
            procs.append(subprocess.Popen(cmd, env=env))
        failed = [i for i, proc in enumerate(procs) if proc.wait() != 0]
        if failed:
            raise UserError(f"{bench.name}: shard(s) {failed} failed (see above); run the same command again to "
                            "resume them")
    else:
        for i, shard in enumerate(shard_files):
            module.run(base + ["--answers-file", shard, "--num-chunks", str(n), "--chunk-idx", str(i)], model=model)
    with open(paths["merged"], "w", encoding="utf-8") as merged:
        for shard in shard_files:
            with open(shard, encoding="utf-8") as f:
                merged.write(f.read())


def score(bench: Benchmark, paths: dict, args: argparse.Namespace) -> None:
    """Run the benchmark's scorer on the merged answers, printing what the original scripts print."""
    bench.scorer(paths, args)


def _print_list(args: argparse.Namespace) -> None:
    for bench in BENCHMARKS.values():
        paths = bench.paths(args.data_root, args.work_dir, "<CKPT>", args.split)
        data = paths["question_file"] or next((a for a in bench.runner_args if "{data}" in a), "")
        data = data.format(data=args.data_root, work=args.work_dir)
        print(f"{bench.name:11s} {bench.runner:32s} {data}  ->  {paths['merged']}")


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        _print_list(args)
        return 0
    if not args.benchmarks:
        raise UserError("name at least one benchmark (see --list), e.g. mgm eval textvqa --model-path PATH")
    benches = [get_benchmark(name) for name in args.benchmarks]
    if not args.model_path:
        raise UserError("--model-path is required")
    if not Path(os.path.expanduser(args.model_path)).is_dir():
        raise UserError(f"--model-path {args.model_path} is not a folder")
    args.ckpt = args.ckpt or ckpt_name(args.model_path, args.work_dir)
    conv_mode = args.conv_mode or default_conv_mode(args.model_path)
    plans = []
    for bench in benches:
        paths = bench.paths(args.data_root, args.work_dir, args.ckpt, args.split)
        if paths["question_file"] and not os.path.isfile(paths["question_file"]):
            raise UserError(f"{bench.name}: question file {paths['question_file']} not found (check --data-root)")
        plans.append((bench, paths))

    from mgm.eval.runner import EvalModel

    # Loaded on first use and shared by every benchmark run in this process (not by GPU shard processes).
    model = EvalModel.load(argparse.Namespace(model_path=args.model_path, model_base=args.model_base,
                                              load_8bit=args.load_8bit, device=args.device,
                                              conv_mode=conv_mode))
    for bench, paths in plans:
        print(f"== {bench.name}: answers -> {paths['merged']}", file=sys.stderr)
        run_answers(bench, paths, args, conv_mode, model)
        if args.limit is not None:
            print(f"== {bench.name}: --limit given, answers may be incomplete; not scoring", file=sys.stderr)
        elif not args.no_score:
            score(bench, paths, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
