"""Sampling rules shared by every generation path: greedy threshold, top-k default, per-row warping.

Each rule is defined here once (the pad id is the model's, `mgm.profile`); the engine, the streamed rows and
continuous batching all use them. torch is imported by the functions that compute: the servers' request checks
read only the constants and `is_greedy`, and a controller or `--help` should not pay for loading torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch

# A temperature at or below this means greedy decoding. The original worker sampled only above 0.001;
# its eval runners and CLI sampled above 0. The two differ only for temperatures in
# (0, 0.001], where sampling is already argmax in all but exact ties.
GREEDY_MAX_TEMPERATURE = 0.001

# top-k applied when sampling and the model's generation config names none (transformers' default).
DEFAULT_TOP_K = 50


def is_greedy(temperature: float) -> bool:
    """True when `temperature` asks for greedy decoding (GREEDY_MAX_TEMPERATURE)."""
    return temperature <= GREEDY_MAX_TEMPERATURE


def sampling_top_k(model: Any) -> int:
    """top-k used when sampling: the model's generation config, else DEFAULT_TOP_K."""
    top_k = getattr(getattr(model, "generation_config", None), "top_k", None)
    return DEFAULT_TOP_K if top_k is None else int(top_k)


def row_sampling_processor(params: Sequence[Any], top_k: int, device: torch.device):
    """A logits processor applying each row's own temperature, top-k and top-p (greedy rows: argmax).

    `params` holds one GenerationParams per row. Mirrors transformers' warpers (temperature → top-k →
    top-p, one token always kept), row by row, so rows with different sampling parameters can share
    one sampled `generate` call. scores: [B, V] → [B, V].
    """
    import torch
    from transformers import LogitsProcessor

    greedy = torch.tensor([not p.do_sample for p in params], device=device)
    temps = torch.tensor([p.temperature if p.do_sample else 1.0 for p in params],
                         dtype=torch.float32, device=device)
    top_p = torch.tensor([p.top_p if (p.top_p is not None and p.do_sample) else 1.0 for p in params],
                         dtype=torch.float32, device=device)

    class RowSampling(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            neg = torch.finfo(scores.dtype).min
            out = scores / temps.to(scores.dtype)[:, None]
            if top_k > 0:
                kth = torch.topk(out, min(top_k, out.shape[-1]), dim=-1).values[:, -1:]
                out = out.masked_fill(out < kth, neg)
            if bool((top_p < 1.0).any()):
                sorted_logits, sorted_idx = torch.sort(out, descending=False)
                cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
                remove = cumulative <= (1 - top_p)[:, None]
                remove[:, -1] = False
                out = out.masked_fill(remove.scatter(1, sorted_idx, remove), neg)
            if bool(greedy.any()):
                one_hot = torch.full_like(scores, neg).scatter_(1, scores.argmax(dim=-1, keepdim=True), 0.0)
                out = torch.where(greedy[:, None], one_hot, out)
            return out

    return RowSampling()


def sample_next(logits: torch.Tensor, params: Sequence[Any], top_k: int) -> torch.Tensor:
    """logits [B, V] → next token ids [B] under each row's parameters (all greedy: plain argmax)."""
    if all(not p.do_sample for p in params):
        return logits.argmax(dim=-1)
    import torch

    process = row_sampling_processor(params, top_k, logits.device)
    probs = torch.softmax(process(None, logits.float()), dim=-1)
    return torch.multinomial(probs, num_samples=1).squeeze(1)
