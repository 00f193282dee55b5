"""What the evaluation-toolkit adapters (lmms-eval, VLMEvalKit) share: one MGM checkpoint behind a
small question-answering and scoring API.

`HarnessModel` loads a checkpoint lazily and answers (question text, images) pairs with mgm's
inference engine, with exactly the prompt `python -m mgm.eval.model_vqa_loader` builds (both read
the checkpoint's `ModelProfile`: images placed, template, end-of-sequence tokens), so a toolkit's
answers equal mgm's own runner and batched answers equal unbatched ones.
`score_continuations` gives log p(continuation | prompt, images) for multiple-choice scoring.
Neither toolkit is imported here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mgm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mgm.errors import UserError


@dataclass
class Question:
    """One user turn: `text` (may already hold `<image>` tags) and its images, in order."""

    text: str
    images: list = field(default_factory=list)


class HarnessModel:
    """An MGM checkpoint for an evaluation toolkit (loaded on first use).

    model_path: checkpoint folder; conv_mode: template name, default the one the checkpoint's
    config implies (`mgm.conversation.template_for_model_config`); model_base: base LLM for LoRA /
    projector-only folders; device: auto, cpu, cuda, cuda:N (one whole model per device, as data
    parallel needs), mps; load_8bit: 8-bit LLM.
    """

    def __init__(self, model_path: str, conv_mode: str | None = None, model_base: str | None = None,
                 device: str = "auto", load_8bit: bool = False) -> None:
        import os

        from mgm.conversation import get_template
        from mgm.eval.runner import EvalModel
        from mgm.model_name import get_model_name_from_path

        self.model_path = os.path.expanduser(str(model_path))
        if not os.path.isfile(os.path.join(self.model_path, "config.json")):
            raise UserError(f"pretrained={model_path} is not an MGM checkpoint folder (no config.json)")
        check_device(device)
        if conv_mode is not None:
            get_template(conv_mode)  # unknown name -> UserError listing the valid ones, before any loading
        self._conv_mode = conv_mode
        self.device = device
        name = get_model_name_from_path(self.model_path)

        def load() -> Any:
            from mgm.inference.engine import InferenceEngine
            from mgm.model.builder import load_pretrained_model
            from mgm.profile import profile_of

            # "cuda:N" holds the whole model (one replica per process): the loader's own rule
            tokenizer, model, processor, context_len = load_pretrained_model(
                self.model_path, model_base, name, load_8bit=load_8bit, device=device)
            return InferenceEngine(tokenizer, model, processor, context_len,
                                   profile=profile_of(model).with_template(conv_mode))

        self.eval_model = EvalModel(name, loader=load)

    @property
    def name(self) -> str:
        return self.eval_model.name

    @property
    def engine(self) -> Any:
        """The inference engine (the checkpoint is loaded on first access)."""
        return self.eval_model.engine

    @property
    def profile(self) -> Any:
        """The checkpoint's `ModelProfile` (with the chosen template)."""
        return self.engine.profile

    @property
    def conv_mode(self) -> str:
        return self._conv_mode if self._conv_mode is not None else self.profile.template

    # -- prompts --------------------------------------------------------------------------------------
    def prompt(self, question: Question) -> str:
        """The templated prompt: images placed as the profile places them (`ModelProfile.prompt`)."""
        return self.profile.prompt(question.text, len(question.images))

    def requests(self, questions: list[Question], params: Any) -> list:
        """Engine requests for `questions` with sampling parameters `params` (a GenerationParams)."""
        from mgm.inference.requests import Request

        return [Request(self.prompt(q), list(q.images), params) for q in questions]

    # -- answering ------------------------------------------------------------------------------------
    def answer(self, questions: list[Question], params: Any) -> list[str]:
        """Answers in one batched `generate` (stop strings in `params.stop` are cut off, text stripped)."""
        if not questions:
            return []
        engine = self.engine
        return engine.generate(self.requests(questions, params))

    def score(self, questions: list[Question], continuations: list[str]) -> list[tuple[float, bool]]:
        """`(log p(continuation | question), greedy?)` per pair, in one forward pass."""
        if not questions:
            return []
        from mgm.inference.requests import GenerationParams

        engine = self.engine
        return score_continuations(engine, self.requests(questions, GenerationParams()), continuations)


def check_device(device: str) -> None:
    """A toolkit that asks for CUDA gets it or a clear error: never a silent run on the CPU.

    (mgm's own loader falls back to the CPU with a Python warning, which the toolkits' loggers hide; an
    evaluation that was meant for a GPU then runs for hours on the CPU.)
    """
    if not str(device).startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise UserError(f"device={device} was asked for, but CUDA is not available on this machine "
                        "(torch.cuda.is_available() is False); use device=cpu, or device=auto (a GPU when "
                        "there is one, else the CPU)")
    _, _, index = str(device).partition(":")
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise UserError(f"device={device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def continuation_ids(engine: Any, prompt: str, continuation: str, prompt_ids: torch.Tensor) -> torch.Tensor:
    """Token ids of `continuation` as it follows `prompt` ([n] long).

    The pair is tokenised together and the prompt's ids are cut off, so a continuation that starts
    with a space (" B") gets the ids it has after the prompt; when joint tokenisation changes the
    prompt's own last tokens, the continuation is tokenised alone.
    """
    from mgm.data.prompt_ids import tokenizer_image_token

    if not continuation:
        raise UserError("an empty continuation cannot be scored")
    whole = tokenizer_image_token(prompt + continuation, engine.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    n = prompt_ids.shape[0]
    if whole.shape[0] > n and torch.equal(whole[:n], prompt_ids):
        return whole[n:]
    return torch.tensor(engine.tokenizer(continuation, add_special_tokens=False).input_ids, dtype=torch.long)


def score_continuations(engine: Any, requests: list, continuations: list[str]) -> list[tuple[float, bool]]:
    """Sum of log-probabilities of each continuation after its request's prompt and images, and
    whether greedy decoding would produce exactly those tokens.

    Rows are left-padded so every continuation ends at the last position; only the logits of the
    last (longest continuation + 1) positions are computed. Shapes: ids/labels [B, L] → logits
    [B, K, V] with K = max continuation length + 1.
    """
    if len(requests) != len(continuations):
        raise ValueError("one continuation per request")
    model = engine.model
    rows, targets = [], []
    limit = engine.profile.context_limit
    for request, continuation in zip(requests, continuations):
        prompt_ids = engine.encode_prompt(request)
        cont = continuation_ids(engine, request.prompt, continuation, prompt_ids)
        total = prompt_ids.shape[0] + cont.shape[0] + (engine.num_image_tokens() - 1) * len(request.images)
        if total > limit:
            raise UserError(f"prompt + continuation are {total} tokens (image tokens included), over the "
                            f"model's context of {limit}")
        rows.append(torch.cat([prompt_ids, cont]))
        targets.append(torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), cont]))
    pad_id = engine.pad_id
    width = max(r.shape[0] for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, target) in enumerate(zip(rows, targets)):
        ids[i, width - row.shape[0]:] = row
        labels[i, width - row.shape[0]:] = target
        mask[i, width - row.shape[0]:] = 1
    device = engine.device
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
    keep = max(int((t != IGNORE_INDEX).sum()) for t in targets) + 1
    with engine.lock, torch.inference_mode():
        if any(r.images for r in requests):
            flat: list = []
            for r in requests:  # text-only rows take a dummy image block, as in engine.generate
                flat.extend(r.images if r.images else [None])
            images, images_aux = engine.image_tensors(flat)
            positions = torch.zeros_like(ids)
            _, positions, mask, _, embeds, labels = model.prepare_inputs_labels_for_multimodal(
                ids, positions, mask, None, labels, images, images_aux, padding_side="left")
        else:
            embeds = model.get_model().embed_tokens(ids)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                       logits_to_keep=keep).logits.float()
    # logits[:, j] predicts the token after position L-keep+j: targets are the last keep-1 labels
    target = labels[:, -(keep - 1):]
    scores = logits[:, :-1]
    valid = target != IGNORE_INDEX
    token_logprobs = torch.log_softmax(scores, dim=-1).gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)
    total_logprob = (token_logprobs * valid).sum(-1)
    greedy = ((scores.argmax(-1) == target) | ~valid).all(-1)
    return [(float(lp), bool(g)) for lp, g in zip(total_logprob.tolist(), greedy.tolist())]
