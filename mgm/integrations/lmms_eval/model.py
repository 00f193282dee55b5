"""The lmms-eval model `mgm`: any MGM checkpoint (normal or HD, every LLM family) in lmms-eval.

`--model mgm --model_args pretrained=<ckpt>[,conv_mode=<template>][,batch_size=N][,device=...]
[,model_base=<base LLM>][,load_8bit=True]`. Requests are answered with mgm's inference engine in
batches of `batch_size` (`auto`: from the model size and free memory), so batched answers equal
one-at-a-time answers and equal `python -m mgm.eval.model_vqa_loader` on the same questions:

* `generate_until`: images from the task's `doc_to_visual`, one `<image>\\n` per image before the
  context (unless the context has its own tags), the checkpoint's template (or `conv_mode`); the
  task's `until` strings stop a row and are cut off, `max_new_tokens` (default 1024), `temperature`
  (0 = greedy; `do_sample=False` forces greedy), `top_p`, `num_beams`.
* `loglikelihood` (multiple-choice and loglikelihood tasks): `(loss, is_greedy)` per request, where
  loss = -log p(continuation | templated context, images) summed over the continuation's tokens, and
  is_greedy whether greedy decoding yields exactly those tokens. A LOSS, not a log-probability:
  lmms-eval picks a multiple-choice answer with `np.argmin` over these values (`acc`, and `acc_norm`
  over loss per character) and its own models all return a loss, so returning log p would score the
  least likely choice. (Its `acc_mutual_info` takes an argmax over the same values and so is
  inverted for every lmms-eval model, as is the `perplexity` of loglikelihood tasks, exp(-mean),
  which expects log-probabilities; no lmms-eval task uses either.)
* `generate_until_multi_round`: the task's `doc_to_text(doc, previous_output=..., round_idx=...,
  previous_round_info=...)` protocol, one conversation at a time.

Data parallel: under `accelerate launch --num_processes N -m lmms_eval ...` each process loads one
replica (on `cuda:<local rank>`, or the CPU) and lmms-eval shards the requests by rank.
"""
from __future__ import annotations

import json
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from mgm.errors import UserError
from mgm.integrations.harness import HarnessModel, Question

_DEFAULT_MAX_NEW_TOKENS = 1024  # as lmms-eval's LLaVA models
_ACCEPTED_ARGS = ("pretrained", "conv_mode", "batch_size", "device", "model_base", "load_8bit", "max_batch_size")


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "y")


def generation_params(gen_kwargs: dict | None) -> Any:
    """lmms-eval's `generation_kwargs` → mgm GenerationParams (unknown keys are ignored)."""
    from mgm.inference.requests import GenerationParams

    kwargs = dict(gen_kwargs or {})
    until = kwargs.get("until") or []
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, (list, tuple)):
        raise UserError(f"generation_kwargs 'until' must be a string or a list, got {type(until).__name__}")
    temperature = float(kwargs.get("temperature") or 0.0)
    do_sample = kwargs.get("do_sample")
    if do_sample is not None and not _flag(do_sample):
        temperature = 0.0
    elif do_sample is not None and temperature <= 0:
        temperature = 1.0  # transformers' default when sampling is asked for without a temperature
    top_p = kwargs.get("top_p")
    return GenerationParams(temperature=temperature, top_p=None if top_p is None else float(top_p),
                            max_new_tokens=int(kwargs.get("max_new_tokens") or _DEFAULT_MAX_NEW_TOKENS),
                            num_beams=int(kwargs.get("num_beams") or 1), stop=[s for s in until if s])


def _images(visuals: Any) -> list:
    """`doc_to_visual(doc)` → a flat list of PIL images (None / [] → no image)."""
    from PIL import Image

    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        visuals = [visuals]
    flat = []
    for visual in visuals:
        if isinstance(visual, (list, tuple)):
            flat.extend(visual)
        elif visual is not None:
            flat.append(visual)
    for visual in flat:
        if not isinstance(visual, Image.Image):
            raise UserError(f"the mgm model takes images only; doc_to_visual gave a {type(visual).__name__} "
                            f"({str(visual)[:80]!r})")
    return flat


def _as_outputs(scores: list[tuple[float, bool]]) -> list:
    """Loglikelihood results in a form the running lmms-eval keeps intact.

    lmms-eval 0.7.3 passes every model output through `unwrap_generation_output`, which turns
    anything but a string into `str(output)`, so multiple-choice scoring later fails to unpack
    "(-1.2, False)"; its `GenerationResult` wrapper hands the payload through unchanged. Detected by
    behaviour, so a release that keeps tuples gets plain tuples.
    """
    try:
        from lmms_eval.api.instance import GenerationResult, unwrap_generation_output
    except ImportError:
        return scores
    if unwrap_generation_output((0.0, True))[0] == (0.0, True):
        return scores
    return [GenerationResult(text=score) for score in scores]


class MGM(lmms):
    """lmms-eval's `mgm` model (module docstring)."""

    is_simple = True

    def __init__(self, pretrained: str, conv_mode: str | None = None, batch_size: int | str = 1,
                 device: str | None = None, model_base: str | None = None, load_8bit: bool | str = False,
                 max_batch_size: int | None = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise UserError(f"unknown model_args for mgm: {', '.join(sorted(unknown))}; valid: "
                            f"{', '.join(_ACCEPTED_ARGS)}")
        import torch
        from accelerate import Accelerator

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            # data parallel: one whole replica per process, requests sharded by lmms-eval
            device = f"cuda:{accelerator.local_process_index}" if torch.cuda.is_available() else "cpu"
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        self.accelerator = accelerator
        self.harness = HarnessModel(pretrained, conv_mode=conv_mode, model_base=model_base,
                                    device=device or "auto", load_8bit=_flag(load_8bit))
        self.engine = self.harness.engine  # load now: lmms-eval reads `device` before the first request
        self._batch_size = str(batch_size)
        if self._batch_size != "auto" and (not self._batch_size.isdigit() or int(self._batch_size) < 1):
            raise UserError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        self.max_batch_size = int(max_batch_size) if max_batch_size else None

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "MGM":
        """`model_args` win over the CLI's --batch_size/--device (lmms-eval would pass both and fail)."""
        from lmms_eval import utils

        args = utils.simple_parse_args_string(arg_string)
        for key, value in (additional_config or {}).items():
            if value is not None and key not in args:
                args[key] = value
        return cls(**args)

    # -- properties lmms-eval reads -------------------------------------------------------------------
    @property
    def device(self) -> Any:
        return self.engine.device

    @property
    def model(self) -> Any:
        return self.engine.model

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def eot_token_id(self) -> int | None:
        return self.engine.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return int(getattr(self.engine.model.config, "max_position_embeddings", None) or self.engine.context_len)

    @property
    def conv_mode(self) -> str:
        return self.harness.conv_mode

    def batch_size_for(self, max_new_tokens: int) -> int:
        if self._batch_size != "auto":
            return int(self._batch_size)
        from mgm.eval.runner import default_batch_size

        size = default_batch_size(self.engine, max_new_tokens)
        return min(size, self.max_batch_size) if self.max_batch_size else size

    # -- helpers --------------------------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id: int) -> Any:
        return self.task_dict[task][split][doc_id]

    def _question(self, context: str, doc_to_visual: Any, doc_id: int, task: str, split: str) -> Question:
        """The question with its images (loaded here, batch by batch, so a task never sits in memory)."""
        visuals = doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual is not None else None
        return Question(context, _images(visuals))

    def _batches(self, keys: list[tuple], size: int) -> list[list[int]]:
        """Request indices grouped by key (same sampling parameters), longest prompt first, in batches."""
        groups: dict[tuple, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key[:-1], []).append(i)
        out = []
        for members in groups.values():
            members.sort(key=lambda i: -keys[i][-1])
            out.extend(members[j:j + size] for j in range(0, len(members), size))
        return out

    # -- lmms-eval API --------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers for `(context, gen_kwargs, doc_to_visual, doc_id, task, split)` requests, in order."""
        args = [request.args for request in requests]
        keys = [(json.dumps(a[1] or {}, sort_keys=True, default=str), len(a[0])) for a in args]
        size = self.batch_size_for(max((generation_params(a[1]).max_new_tokens for a in args), default=1))
        results: list[str | None] = [None] * len(args)
        bar = tqdm(total=len(args), disable=self.rank != 0, desc="mgm generate_until")
        for batch in self._batches(keys, size):
            questions = [self._question(args[i][0], *args[i][2:]) for i in batch]
            texts = self.harness.answer(questions, generation_params(args[batch[0]][1]))
            for i, text in zip(batch, texts):
                results[i] = text
                self.cache_hook.add_partial("generate_until", (args[i][0], args[i][1]), text)
            bar.update(len(batch))
        bar.close()
        return results

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """`(-log p, greedy?)` for `(context, continuation, doc_to_visual, doc_id, task, split)` requests
        (lower is more likely, as lmms-eval's argmin selection expects: module docstring); a callable
        continuation (loglikelihood tasks' doc_to_target) is applied to the doc; the 2-tuple
        `(context, continuation)` of acc_mutual_info is scored without images."""
        args = [request.args for request in requests]
        continuations = []
        for a in args:
            continuation = a[1]
            if callable(continuation):
                _, _, _, doc_id, task, split = a
                continuation = continuation(self._doc(task, split, doc_id))
            if isinstance(continuation, (list, tuple)):
                continuation = continuation[0]
            continuations.append(str(continuation))
        keys = [(len(a[0]) + len(c),) for a, c in zip(args, continuations)]
        results: list[tuple[float, bool] | None] = [None] * len(args)
        bar = tqdm(total=len(args), disable=self.rank != 0, desc="mgm loglikelihood")
        for batch in self._batches(keys, self.batch_size_for(1)):
            questions = [Question(args[i][0]) if len(args[i]) == 2 else self._question(args[i][0], *args[i][2:])
                         for i in batch]
            for i, (logprob, greedy) in zip(batch, self.harness.score(questions, [continuations[i] for i in batch])):
                results[i] = (-logprob, greedy)
            bar.update(len(batch))
        bar.close()
        return _as_outputs(results)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Multi-round tasks: each round's context comes from the task's doc_to_text until it signals
        the end; returns the answers of every round per request (a list, which lmms-eval keeps as is)."""
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="mgm multi-round"):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            params = generation_params(gen_kwargs)
            doc = self._doc(task, split, doc_id)
            question = self._question(context, doc_to_visual, doc_id, task, split)
            answers: list[str] = []
            info = None
            round_idx = 0
            while True:
                answers.append(self.harness.answer([question], params)[0])
                round_idx += 1
                visuals, context, terminal, answers_so_far, info = doc_to_text(
                    doc, previous_output=list(answers), round_idx=round_idx, previous_round_info=info)
                answers = list(answers_so_far)
                if terminal:
                    break
                question = Question(context, _images(visuals))
            results.append(list(answers))
        return results
