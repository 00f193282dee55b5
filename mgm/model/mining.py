"""Patch info mining (MGM_SPEC §2.6): each low-res token attends over its high-res window.

Literal definition, per LR token x and its HR window {a_j} (j < ps²):
    q = Lq(x),  k_j = Wk·LNk(a_j) + bk,  v_j = Wv·LNv(a_j) + bv
    out = Σ_j softmax_j(q·k_j / √D) v_j
Computed here without projecting every HR position (the literal form costs 2·L·ps²·C·D FLOPs):
    q·k_j = (Wkᵀq ⊙ γk)·â_j + const      (â_j = a_j normalised without affine; const cancels in softmax)
    Σ_j w_j v_j = Wv(γv ⊙ Σ_j w_j â_j + βv) + bv      (the weights w_j sum to 1)
so only the statistics of each HR pixel and two dot products with it are needed. On a dense map that
is one normalisation pass and two reads. The model passes the HR tower's output factored
(`MultiScaleMap`: stage maps + bilinear resize matrices) and `mine_patches_multiscale` evaluates the
same formula on the stage maps at their own resolution, so the 2880-channel upsampled stack is never
built; `mine_patches_reference` is the literal form, kept as the baseline for tests and benchmarks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mgm.model.vision.multiscale import MultiScaleMap


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


def crops_to_grid(tokens: torch.Tensor, g: int) -> torch.Tensor:
    """[B·g², P², D] tokens of g×g crops (row-major) -> [B, (g·P)², D] on one grid over the whole image.

    Mining the crops of an HR map crop by crop equals mining the whole map with this grid.
    """
    bg, num_tokens, dim = tokens.shape
    p = math.isqrt(num_tokens)
    b = bg // (g * g)
    return tokens.view(b, g, g, p, p, dim).permute(0, 1, 3, 2, 4, 5).reshape(b, g * g * num_tokens, dim)


def grid_to_crops(tokens: torch.Tensor, g: int) -> torch.Tensor:
    """Inverse of `crops_to_grid`: [B, (g·P)², D] -> [B·g², P², D]."""
    b, total, dim = tokens.shape
    p = math.isqrt(total) // g
    return tokens.view(b, g, p, g, p, dim).permute(0, 1, 3, 2, 4, 5).reshape(b * g * g, p * p, dim)


def _fold_query(lr: torch.Tensor, query: nn.Sequential, key: nn.Sequential, dtype: torch.dtype) -> torch.Tensor:
    """q̃ = (Lq(x) Wk) ⊙ γk / √D  [N, L, C]: the key Linear and LayerNorm scale moved to the query side."""
    ln_k, lin_k = key[0], key[1]
    q = query(lr).to(dtype)
    folded = q @ lin_k.weight.to(dtype)
    scale = 1.0 / math.sqrt(lr.shape[-1])
    return folded * (ln_k.weight.to(dtype) * scale) if ln_k.weight is not None else folded * scale


def _value_out(pooled: torch.Tensor, value: nn.Sequential, dtype: torch.dtype) -> torch.Tensor:
    """Wv(γv ⊙ Σ_j w_j n̂_j + βv) + bv for the pooled normalised features [N, L, C] -> [N, L, D]."""
    ln_v, lin_v = value[0], value[1]
    if ln_v.weight is not None:
        pooled = pooled * ln_v.weight.to(pooled.dtype) + ln_v.bias.to(pooled.dtype)
    return lin_v(pooled.to(lin_v.weight.dtype)).to(dtype)


def mine_patches(
    lr: torch.Tensor,
    hr: torch.Tensor | MultiScaleMap,
    query: nn.Sequential,
    key: nn.Sequential,
    value: nn.Sequential,
) -> torch.Tensor:
    """Mined detail for every LR token.

    lr: [N, L, D] LR tokens (L = P², a square grid); hr: [N, C, Hs, Ws] HR map with Ws = P·ps, dense or
    factored (`MultiScaleMap`, read stage by stage without being materialised).
    Returns [N, L, D]; the caller adds it to `lr` (residual on the raw CLIP features).
    """
    if isinstance(hr, MultiScaleMap):
        return mine_patches_multiscale(lr, hr, query, key, value)
    grid = math.isqrt(lr.shape[1])
    windows = group_windows(hr.to(lr.dtype), grid)  # [N, L, p, C]
    ln_k, ln_v = key[0], value[0]
    # One normalisation serves both projections when their LayerNorms agree on eps.
    normed_k = F.layer_norm(windows, (windows.shape[-1],), eps=ln_k.eps)
    normed_v = normed_k if ln_v.eps == ln_k.eps else F.layer_norm(windows, (windows.shape[-1],), eps=ln_v.eps)
    q_folded = _fold_query(lr, query, key, lr.dtype)
    scores = torch.einsum("nlc,nlpc->nlp", q_folded, normed_k)
    scores = torch.nan_to_num(scores)  # the original applies nan_to_num to the scores
    weights = scores.softmax(dim=-1)
    pooled = torch.einsum("nlp,nlpc->nlc", weights, normed_v)  # Σ_j w_j â_j
    return _value_out(pooled, value, lr.dtype)


def _window_bands(matrix: torch.Tensor | None, n_out: int, n_in: int, grid: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The part of a 1-D resize matrix [n_out, n_in] each of `grid` windows of ps = n_out/grid outputs uses.

    Returns (index [grid, n] of the n consecutive inputs window a reads, band [grid, ps, n] of weights).
    """
    ps = n_out // grid
    if matrix is None:
        matrix = torch.eye(n_in, dtype=torch.float32, device=device)
    m = matrix[: grid * ps].view(grid, ps, n_in)
    used = (m != 0).any(dim=1)  # [grid, n_in]
    pos = torch.arange(n_in, device=device)
    lo = torch.where(used, pos, n_in).amin(dim=1)
    hi = torch.where(used, pos, -1).amax(dim=1)
    n = int((hi - lo).max()) + 1
    index = lo.clamp(max=n_in - n)[:, None] + torch.arange(n, device=device)
    return index, torch.gather(m, 2, index[:, None, :].expand(grid, ps, n))


def _stage_windows(x: torch.Tensor, rows, cols, size: tuple[int, int], grid: int):
    """Centred stage features per LR window and the resize weights that map them to its HR pixels.

    x: [N, C_s, H_s, W_s]. Returns (patches [N, L, K, C_s] with each input pixel's channel mean removed,
    means [N, L, K] those means, mix [L, p, K] or None when the stage is not resized (K = p)).
    """
    n, c = x.shape[:2]
    mean = x.mean(dim=1, keepdim=True)
    centred = x - mean
    if rows is None and cols is None:
        return group_windows(centred, grid), group_windows(mean, grid)[..., 0], None
    r_idx, r_band = _window_bands(rows, size[0], x.shape[-2], grid, x.device)
    c_idx, c_band = _window_bands(cols, size[1], x.shape[-1], grid, x.device)
    ii, jj = r_idx[:, None, :, None], c_idx[None, :, None, :]  # -> [grid, grid, n_r, n_c]
    k = r_idx.shape[1] * c_idx.shape[1]
    patches = centred.permute(0, 2, 3, 1)[:, ii, jj].reshape(n, grid * grid, k, c)
    means = mean[:, 0][:, ii, jj].reshape(n, grid * grid, k)
    mix = torch.einsum("aip,bjq->abijpq", r_band, c_band).reshape(grid * grid, -1, k)
    return patches, means, mix


def mine_patches_multiscale(lr: torch.Tensor, hr: MultiScaleMap, query: nn.Sequential, key: nn.Sequential,
                            value: nn.Sequential) -> torch.Tensor:
    """`mine_patches` on a factored HR map, reading each stage once at its own resolution.

    The HR pixel j of window l is a_j = cat_s(Σ_k M_jk x_k) over the stage pixels k the window's resize
    reads (M the window's bilinear weights). With every stage pixel centred (x_k = t_k + x'_k, t_k its
    channel mean), Σ_c of a stage's resized x' is exactly 0, so per HR pixel
        μ_j = Σ_s C_s (M t_s)_j / C,   C·σ_j² = Σ_s [(M G_s Mᵀ)_jj + C_s ((M t_s)_j - μ_j)²]   (G_s = x'x'ᵀ)
        q̃·n̂_j = (Σ_s [(M x'_s q̃_s)_j + ((M t_s)_j - μ_j) Σ q̃_s]) / σ_j
        Σ_j w_j n̂_j = cat_s((w/σ)ᵀM x'_s + Σ_j (w/σ)_j ((M t_s)_j - μ_j))
    Computed in float32 (the stage data is small); returns [N, L, D] in lr's dtype.
    """
    grid = math.isqrt(lr.shape[1])
    f32 = torch.float32
    q_folded = _fold_query(lr, query, key, f32)  # [N, L, C]
    widths = [s.shape[1] for s in hr.stages]
    total = sum(widths)
    parts = []  # per stage: (patches, mix, q·x' mixed [N,L,p], resized means [N,L,p], Σ resized x'² [N,L,p])
    for x, rows, cols, q_s in zip(hr.stages, hr.rows, hr.cols, q_folded.split(widths, dim=-1)):
        patches, means, mix = _stage_windows(x.to(device=lr.device, dtype=f32), rows, cols, hr.size, grid)
        dots = (patches @ q_s[..., None])[..., 0]  # [N, L, K]
        if mix is None:
            sq = patches.square().sum(-1)
        else:
            gram = patches @ patches.transpose(-1, -2)  # [N, L, K, K]
            sq = ((mix @ gram) * mix).sum(-1)
            dots, means = (torch.einsum("lpk,nlk->nlp", mix, t) for t in (dots, means))
        parts.append((patches, mix, dots, means, sq, q_s.sum(-1, keepdim=True)))
    mu = sum(c * p[3] for c, p in zip(widths, parts)) / total  # [N, L, p]
    var = sum(p[4] + c * (p[3] - mu).square() for c, p in zip(widths, parts)) / total
    var = var.clamp_min(0)
    ln_k, ln_v = key[0], value[0]
    rstd_k = torch.rsqrt(var + ln_k.eps)
    rstd_v = rstd_k if ln_v.eps == ln_k.eps else torch.rsqrt(var + ln_v.eps)
    scores = rstd_k * sum(p[2] + (p[3] - mu) * p[5] for p in parts)
    weights = torch.nan_to_num(scores).softmax(dim=-1)  # the original applies nan_to_num to the scores
    u = weights * rstd_v  # [N, L, p]
    pooled = []
    for patches, mix, _, means, _, _ in parts:
        v = u if mix is None else torch.einsum("nlp,lpk->nlk", u, mix)
        pooled.append((v[..., None, :] @ patches)[..., 0, :] + (u * (means - mu)).sum(-1, keepdim=True))
    return _value_out(torch.cat(pooled, dim=-1), value, lr.dtype)


def mine_patches_reference(
    lr: torch.Tensor, hr: torch.Tensor, query: nn.Module, key: nn.Module, value: nn.Module
) -> torch.Tensor:
    """The literal per-window formulation of MGM_SPEC §2.6 (baseline for tests and benchmarks)."""
    n, num_tokens, dim = lr.shape
    grid = math.isqrt(num_tokens)
    windows = group_windows(hr.to(lr.dtype), grid)
    q = query(lr)
    k = key(windows)
    v = value(windows)
    scores = torch.nan_to_num(q[:, :, None, :] @ (k / dim**0.5).transpose(-1, -2))
    attn = scores.softmax(dim=-1)
    return (attn @ v).mean(dim=2)
