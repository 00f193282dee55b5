"""Patch info mining (MGM_SPEC §2.6): each low-res token attends over its high-res window.

Literal definition, per LR token x and its HR window {a_j} (j < ps²):
    q = Lq(x),  k_j = Wk·LNk(a_j) + bk,  v_j = Wv·LNv(a_j) + bv
    out = Σ_j softmax_j(q·k_j / √D) v_j
Computed here without projecting every HR position (the literal form costs 2·L·ps²·C·D FLOPs):
    q·k_j = (Wkᵀq ⊙ γk)·â_j + const      (â_j = a_j normalised without affine; const cancels in softmax)
    Σ_j w_j v_j = Wv(γv ⊙ Σ_j w_j â_j + βv) + bv      (the weights w_j sum to 1)
so the HR map is normalised once and read twice: ~ps²·D/2 times fewer FLOPs, same function up to rounding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def build_mining_projectors(mm_hidden_size: int, mm_hidden_size_aux: int) -> dict[str, nn.Sequential]:
    """The three `vlm_uni_*` modules with the original attribute layout (LayerNorm at .0, Linear at .1)."""

    def block(dim_in: int) -> nn.Sequential:
        return nn.Sequential(nn.LayerNorm(dim_in), nn.Linear(dim_in, mm_hidden_size))

    return {
        "vlm_uni_query_projector": block(mm_hidden_size),
        "vlm_uni_aux_projector": block(mm_hidden_size_aux),
        "vlm_uni_val_projector": block(mm_hidden_size_aux),
    }


def group_windows(hr: torch.Tensor, grid: int) -> torch.Tensor:
    """[N, C, Hs, Ws] -> [N, grid², ps², C]; LR token r·grid+c gets HR rows r·ps.., cols c·ps.. (row-major)."""
    n, c, hs, ws = hr.shape
    ps = ws // grid
    x = hr.permute(0, 2, 3, 1).reshape(n, grid, ps, grid, ps, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(n, grid * grid, ps * ps, c)


def mine_patches(
    lr: torch.Tensor,
    hr: torch.Tensor,
    query: nn.Sequential,
    key: nn.Sequential,
    value: nn.Sequential,
) -> torch.Tensor:
    """Mined detail for every LR token.

    lr: [N, L, D] LR tokens (L = P², a square grid); hr: [N, C, Hs, Ws] HR map with Ws = P·ps.
    Returns [N, L, D]; the caller adds it to `lr` (residual on the raw CLIP features).
    """
    n, num_tokens, dim = lr.shape
    grid = int(math.isqrt(num_tokens))
    windows = group_windows(hr.to(lr.dtype), grid)  # [N, L, p, C]
    ln_k, lin_k = key[0], key[1]
    ln_v, lin_v = value[0], value[1]
    # One normalisation serves both projections when their LayerNorms agree on eps.
    normed_k = F.layer_norm(windows, (windows.shape[-1],), eps=ln_k.eps)
    normed_v = normed_k if ln_v.eps == ln_k.eps else F.layer_norm(windows, (windows.shape[-1],), eps=ln_v.eps)

    q = query(lr)  # [N, L, D]
    # Fold Wk and the key LayerNorm's scale into the query: q̃ = (q Wk) ⊙ γk / √D  -> [N, L, C]
    q_folded = (q @ lin_k.weight) * (ln_k.weight / math.sqrt(dim)) if ln_k.weight is not None else (q @ lin_k.weight) / math.sqrt(dim)
    scores = torch.einsum("nlc,nlpc->nlp", q_folded, normed_k)
    scores = torch.nan_to_num(scores)  # the original applies nan_to_num to the scores
    weights = scores.softmax(dim=-1)
    pooled = torch.einsum("nlp,nlpc->nlc", weights, normed_v)  # Σ_j w_j â_j
    if ln_v.weight is not None:
        pooled = pooled * ln_v.weight + ln_v.bias
    return lin_v(pooled)


def mine_patches_reference(
    lr: torch.Tensor, hr: torch.Tensor, query: nn.Module, key: nn.Module, value: nn.Module
) -> torch.Tensor:
    """The literal per-window formulation of MGM_SPEC §2.6 (baseline for tests and benchmarks)."""
    n, num_tokens, dim = lr.shape
    grid = int(math.isqrt(num_tokens))
    windows = group_windows(hr.to(lr.dtype), grid)
    q = query(lr)
    k = key(windows)
    v = value(windows)
    scores = torch.nan_to_num(q[:, :, None, :] @ (k / dim**0.5).transpose(-1, -2))
    attn = scores.softmax(dim=-1)
    return (attn @ v).mean(dim=2)
