"""The scorer of each registered benchmark: `scorer(paths, args)` scores the merged answers of a run.

`paths` are the benchmark's resolved paths (`Benchmark.paths`), `args` the `mgm eval` options (ckpt,
judge settings). Every scorer calls package code only (`mgm.eval.*`), so it works the same from a
repository checkout and from an installed wheel. They print what the original scripts print.
"""
from __future__ import annotations

import argparse
import os


def score_textvqa(paths: dict, args: argparse.Namespace) -> None:
    from mgm.eval import eval_textvqa

    eval_textvqa.main(["--annotation-file", paths["annotation_file"], "--result-file", paths["merged"]])


def score_mme(paths: dict, args: argparse.Namespace) -> None:
    from mgm.eval import eval_mme

    eval_mme.main(["--answers-file", paths["merged"], "--mme-root", paths["image_folder"]])


def score_mmbench(paths: dict, args: argparse.Namespace) -> None:
    from mgm.eval.converters import mmbench
    from mgm.eval.mmbench_accuracy import format_accuracy, mmbench_accuracy

    os.makedirs(paths["upload_dir"], exist_ok=True)
    upload = mmbench.main(["--annotation-file", paths["question_file"], "--result-dir", paths["result_dir"],
                           "--upload-dir", paths["upload_dir"], "--experiment", args.ckpt])
    # The original only writes the server's .xlsx; a split with answers (dev) is also scored here.
    scores = mmbench_accuracy(paths["question_file"], upload)
    split = os.path.splitext(os.path.basename(paths["question_file"]))[0]
    if scores is None:
        print(f"MMBench {split}: no answers in the TSV; submit {upload} to the MMBench server for the score")
    else:
        print(format_accuracy(split, scores))


def score_mmvet(paths: dict, args: argparse.Namespace) -> None:
    from mgm.eval.converters import mmvet

    os.makedirs(os.path.dirname(paths["results_file"]), exist_ok=True)
    mmvet.main(["--src", paths["merged"], "--dst", paths["results_file"]])


def score_mmmu(paths: dict, args: argparse.Namespace) -> None:
    from mgm.eval.mmmu_utils import eval_result_file

    eval_result_file(["--result_file", paths["merged"], "--output_path", paths["output_path"]])


def score_mmmu_test(paths: dict, args: argparse.Namespace) -> None:
    from mgm.eval.mmmu_utils import convert_to_test

    convert_to_test(["--result_file", paths["merged"], "--output_path", paths["output_path"]])


def score_math_vista(paths: dict, args: argparse.Namespace) -> None:
    from mgm.eval.MathVista import calculate_score, extract_answer

    judge = []
    for flag, value in (("--api_base", getattr(args, "api_base", None)), ("--api_key", getattr(args, "api_key", None)),
                        ("--llm_engine", getattr(args, "judge_model", None))):
        if value:
            judge += [flag, value]
    extract_answer.main(["--output_file", paths["merged"], *judge])
    calculate_score.main(["--output_file", paths["merged"], "--score_file", paths["score_file"],
                          "--gt_file", paths["question_file"]])


def score_pope(paths: dict, args: argparse.Namespace) -> None:
    from mgm.eval import eval_pope

    eval_pope.main(["--annotation-dir", paths["annotation_dir"], "--question-file", paths["question_file"],
                    "--result-file", paths["merged"]])


def score_sqa(paths: dict, args: argparse.Namespace) -> None:
    from mgm.eval import eval_science_qa

    out = paths["answers"]
    eval_science_qa.main(["--base-dir", paths["base_dir"], "--result-file", paths["merged"],
                          "--output-file", os.path.join(out, "output.json"),
                          "--output-result", os.path.join(out, "result.json")])
