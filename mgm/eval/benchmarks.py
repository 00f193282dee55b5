"""Registry of the evaluation benchmarks: runner, data paths, answer paths and scorer of each (docs/original.md#evaluation).

Paths follow the original eval scripts, relative to a data root (default `./data/MGM-Eval`) and a work
folder (default `./work_dirs`); `{ckpt}` is the checkpoint name the scripts call CKPT (e.g.
`MGM/MGM-7B-HD`). "Chunked" benchmarks write one answers file per shard, `<answers>/<N>_<i>.jsonl`,
and merge them into `<answers>/merge.jsonl`; the others write `<answers>` directly.

| name       | runner                         | data (under the data root)                                   | answers                                   |
|------------|--------------------------------|--------------------------------------------------------------|-------------------------------------------|
| textvqa    | mgm.eval.model_vqa_loader      | textvqa/llava_textvqa_val_v051_ocr.jsonl, textvqa/train_images | {work}/textvqa/answers/{ckpt}/ (chunked)  |
| mme        | mgm.eval.model_vqa_loader      | MME/llava_mme.jsonl, MME/MME_Benchmark_release_version       | {data}/MME/answers/{ckpt}.jsonl            |
| mmbench    | mgm.eval.model_vqa_mmbench     | mmbench/mmbench_dev_20230712.tsv (--single-pred-prompt)      | {data}/mmbench/answers/<split>/{ckpt}.jsonl |
| mmvet      | mgm.eval.model_vqa             | mm-vet/llava-mm-vet.jsonl, mm-vet/images                     | {data}/mm-vet/answers/{ckpt}/ (chunked)   |
| mmmu       | MMMU/eval/run_llava.py         | MMMU/ (split validation, configs/llava1.5.yaml)              | {work}/MMMU/answers/{ckpt}/ (chunked)     |
| mmmu_test  | MMMU/eval/run_llava.py         | MMMU/ (split test)                                           | {work}/MMMU/answers_test/{ckpt}/ (chunked) |
| math_vista | mgm.eval.model_math_vista      | MathVista/testmini.json, MathVista/                          | {data}/MathVista/answers/{ckpt}/ (chunked) |
| pope       | mgm.eval.model_vqa_loader      | pope/llava_pope_test.jsonl, pope/val2014, pope/coco          | {work}/pope/answers/{ckpt}/ (chunked)     |
| sqa        | mgm.eval.model_vqa_science     | scienceqa/llava_test_CQM-A.json, scienceqa/images/test       | {work}/scienceqa/answers/{ckpt}/ (chunked) |

(mmmu_test answers go to their own folder: the original wrote validation and test answers to the same
files, which a resumable runner would mix up.) Scores: TextVQA accuracy, MME perception/cognition,
the MMBench submission .xlsx under mmbench/answers_upload/, the MM-Vet grader JSON under
mm-vet/results/, MMMU val.json / test.json under {work}/MMMU/{ckpt}/, MathVista score.jsonl next to the
answers (needs an OpenAI-compatible judge for answers the rules cannot extract), POPE and ScienceQA metrics.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mgm.errors import UserError
from mgm.eval import benchmark_scorers as scorers

MMBENCH_SPLIT = "mmbench_dev_20230712"
MMMU_CONFIG = str(Path(__file__).resolve().parent / "MMMU" / "eval" / "configs" / "llava1.5.yaml")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its runner module, scorer, converters and files (templates with {data}, {work}, {ckpt},
    {split}). `scorer(paths, args)` scores the merged answers; `converters` names the modules that turn
    answers into an external grader's format (also runnable alone with `python -m`)."""

    name: str
    runner: str
    scorer: Callable[[dict, object], None]
    question_file: str | None
    image_folder: str | None
    answers: str
    chunked: bool
    runner_args: tuple[str, ...] = ()
    split: str | None = None
    extra: dict = field(default_factory=dict)
    converters: tuple[str, ...] = ()

    def paths(self, data_root: str, work_dir: str, ckpt: str, split: str | None = None) -> dict[str, str]:
        """Resolved paths: question_file, image_folder, answers (file or folder), merged (answers file)."""
        values = {"data": data_root.rstrip("/") or ".", "work": work_dir.rstrip("/") or ".", "ckpt": ckpt,
                  "split": split or self.split or ""}
        fill = lambda template: template.format(**values) if template else ""  # noqa: E731
        answers = fill(self.answers)
        out = {"question_file": fill(self.question_file), "image_folder": fill(self.image_folder),
               "answers": answers, "merged": os.path.join(answers, "merge.jsonl") if self.chunked else answers}
        out.update({k: fill(v) for k, v in self.extra.items()})
        return out


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("textvqa", "mgm.eval.model_vqa_loader", scorers.score_textvqa, "{data}/textvqa/llava_textvqa_val_v051_ocr.jsonl",
              "{data}/textvqa/train_images", "{work}/textvqa/answers/{ckpt}", chunked=True,
              extra={"annotation_file": "{data}/textvqa/TextVQA_0.5.1_val.json"}),
    Benchmark("mme", "mgm.eval.model_vqa_loader", scorers.score_mme, "{data}/MME/llava_mme.jsonl",
              "{data}/MME/MME_Benchmark_release_version", "{data}/MME/answers/{ckpt}.jsonl", chunked=False),
    Benchmark("mmbench", "mgm.eval.model_vqa_mmbench", scorers.score_mmbench, "{data}/mmbench/{split}.tsv", None,
              "{data}/mmbench/answers/{split}/{ckpt}.jsonl", chunked=False, runner_args=("--single-pred-prompt",),
              split=MMBENCH_SPLIT, extra={"upload_dir": "{data}/mmbench/answers_upload/{split}",
                                          "result_dir": "{data}/mmbench/answers/{split}"},
              converters=("mgm.eval.converters.mmbench",)),
    Benchmark("mmvet", "mgm.eval.model_vqa", scorers.score_mmvet, "{data}/mm-vet/llava-mm-vet.jsonl", "{data}/mm-vet/images",
              "{data}/mm-vet/answers/{ckpt}", chunked=True,
              extra={"results_file": "{data}/mm-vet/results/{ckpt}/{ckpt}.json"},
              converters=("mgm.eval.converters.mmvet",)),
    Benchmark("mmmu", "mgm.eval.MMMU.eval.run_llava", scorers.score_mmmu, None, None, "{work}/MMMU/answers/{ckpt}", chunked=True,
              runner_args=("--data_path", "{data}/MMMU", "--config_path", MMMU_CONFIG, "--split", "validation"),
              extra={"output_path": "{work}/MMMU/{ckpt}/val.json"}),
    Benchmark("mmmu_test", "mgm.eval.MMMU.eval.run_llava", scorers.score_mmmu_test, None, None, "{work}/MMMU/answers_test/{ckpt}",
              chunked=True, runner_args=("--data_path", "{data}/MMMU", "--config_path", MMMU_CONFIG, "--split", "test"),
              extra={"output_path": "{work}/MMMU/{ckpt}/test.json"}),
    Benchmark("math_vista", "mgm.eval.model_math_vista", scorers.score_math_vista, "{data}/MathVista/testmini.json", "{data}/MathVista",
              "{data}/MathVista/answers/{ckpt}", chunked=True,
              extra={"score_file": "{data}/MathVista/answers/{ckpt}/score.jsonl"}),
    Benchmark("pope", "mgm.eval.model_vqa_loader", scorers.score_pope, "{data}/pope/llava_pope_test.jsonl", "{data}/pope/val2014",
              "{work}/pope/answers/{ckpt}", chunked=True, extra={"annotation_dir": "{data}/pope/coco"}),
    Benchmark("sqa", "mgm.eval.model_vqa_science", scorers.score_sqa, "{data}/scienceqa/llava_test_CQM-A.json",
              "{data}/scienceqa/images/test", "{work}/scienceqa/answers/{ckpt}", chunked=True,
              runner_args=("--single-pred-prompt",), extra={"base_dir": "{data}/scienceqa"}),
)}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`; UserError lists the valid names."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UserError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}") from None
