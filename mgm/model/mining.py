"""Patch info mining (docs/original.md#patch-info-mining): each low-res token attends over its high-res window.

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

from mgm.model.fast_linear import linear, linear_weight
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
    ln_q = query[0]
    q = linear(F.layer_norm(lr, ln_q.normalized_shape, ln_q.weight, ln_q.bias, ln_q.eps), query[1]).to(dtype)
    folded = linear_weight(q, lin_k.weight.to(dtype).t())
    scale = 1.0 / math.sqrt(lr.shape[-1])
    return folded * (ln_k.weight.to(dtype) * scale) if ln_k.weight is not None else folded * scale


def _value_out(pooled: torch.Tensor, value: nn.Sequential, dtype: torch.dtype) -> torch.Tensor:
    """Wv(γv ⊙ Σ_j w_j n̂_j + βv) + bv for the pooled normalised features [N, L, C] -> [N, L, D]."""
    ln_v, lin_v = value[0], value[1]
    if ln_v.weight is not None:
        pooled = pooled * ln_v.weight.to(pooled.dtype) + ln_v.bias.to(pooled.dtype)
    return linear(pooled.to(lin_v.weight.dtype), lin_v).to(dtype)


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


def _window_bands(matrix: torch.Tensor | None, n_out: int, n_in: int, grid: int, device):
    """Which inputs of a 1-D resize matrix [n_out, n_in] each of `grid` windows (ps = n_out/grid outputs) reads.

    Returns (index [grid, n] of the n consecutive inputs window a reads, in an input axis padded by
    (pad_lo, pad_hi); band [grid, ps, n] of their weights over a zero-padded axis, or [ps, n] shared
    by all windows over an edge-replicated axis; stride, the step of index between windows when it
    is regular (window a starting at index[0, 0] + a·stride), else None).
    """
    ps = n_out // grid
    if matrix is None:
        matrix = torch.eye(n_in, dtype=torch.float32, device=device)
    m = matrix[: grid * ps].view(grid, ps, n_in)
    used = (m != 0).any(dim=1)  # [grid, n_in]
    pos = torch.arange(n_in, device=device)
    lo = torch.where(used, pos, n_in).amin(dim=1)
    hi = torch.where(used, pos, -1).amax(dim=1)
    stride = n_in // grid if n_in % grid == 0 else None
    if stride is not None:  # regular windows: pad the axis so every window has the same offset and width
        base = torch.arange(grid, device=device) * stride
        first, width = int((lo - base).min()), int((hi - base).max() - (lo - base).min()) + 1
        pad = (max(0, -first), max(0, first + (grid - 1) * stride + width - n_in))
        index = base[:, None] + (first + pad[0]) + torch.arange(width, device=device)
    else:
        width, pad = int((hi - lo).max()) + 1, (0, 0)
        index = lo.clamp(max=n_in - width)[:, None] + torch.arange(width, device=device)
    band = torch.gather(F.pad(m, pad), 2, index[:, None, :].expand(grid, ps, width))
    if stride is not None:
        # Bilinear resizes clamp at the borders, which equals one band for every window over an
        # edge-replicated axis: then all windows share `band` [ps, n] (mixing becomes plain matmuls).
        shared = band[grid // 2]
        real = (index - pad[0]).clamp(0, n_in - 1)[:, None, :].expand(grid, ps, width)
        rebuilt = torch.zeros_like(m).scatter_add_(2, real, shared.expand(grid, ps, width))
        if torch.allclose(rebuilt, m, atol=1e-6):
            return index, shared, stride, pad
    return index, band, stride, pad


def _stage_windows(x: torch.Tensor, rows, cols, size: tuple[int, int], grid: int):
    """Centred stage features per LR window and the resize weights that map them to its HR pixels.

    x: [N, C_s, H_s, W_s]. Returns (patches [N, L, K, C_s] with each input pixel's channel mean removed,
    means [N, L, K] those means, mix [L, p, K] or [p, K] (shared by all windows), or None when the
    stage is not resized (K = p)).
    """
    n, c = x.shape[:2]
    mean = x.mean(dim=1, keepdim=True)
    centred = x - mean
    if rows is None and cols is None:
        return group_windows(centred, grid), group_windows(mean, grid)[..., 0], None
    r_idx, r_band, r_step, r_pad = _window_bands(rows, size[0], x.shape[-2], grid, x.device)
    c_idx, c_band, c_step, c_pad = _window_bands(cols, size[1], x.shape[-1], grid, x.device)
    n_r, n_c = r_idx.shape[1], c_idx.shape[1]
    shared = r_band.dim() == 2 and c_band.dim() == 2
    if not shared:  # per-window bands over zero padding
        r_band, c_band = (b if b.dim() == 3 else b.expand(grid, *b.shape) for b in (r_band, c_band))
    mode = "replicate" if shared else "constant"

    def gather(t: torch.Tensor) -> torch.Tensor:  # [N, C', H_s, W_s] -> [N, L, n_r·n_c, C']
        if any(r_pad) or any(c_pad):
            t = F.pad(t, (*c_pad, *r_pad), mode=mode)
        t = t.permute(0, 2, 3, 1)  # [N, H, W, C'] (padded)
        if r_step is not None and c_step is not None:  # windows as strided views, one copy below
            t = t[:, int(r_idx[0, 0]):, int(c_idx[0, 0]):].unfold(1, n_r, r_step)[:, :grid]
            t = t.unfold(2, n_c, c_step)[:, :, :grid].permute(0, 1, 2, 4, 5, 3)  # [N, g, g, n_r, n_c, C']
        else:
            t = t.index_select(1, r_idx.flatten()).index_select(2, c_idx.flatten())
            t = t.view(n, grid, n_r, grid, n_c, -1).transpose(2, 3)
        return t.reshape(n, grid * grid, n_r * n_c, t.shape[-1])

    patches, means = gather(centred), gather(mean)[..., 0]
    if shared:
        return patches, means, torch.einsum("ip,jq->ijpq", r_band, c_band).reshape(-1, n_r * n_c)
    mix = torch.einsum("aip,bjq->abijpq", r_band, c_band).reshape(grid * grid, -1, n_r * n_c)
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
    windows, dots, means, sq = [], [], [], []  # per stage; the last three [N, L, p] each
    for x, rows, cols, q_s in zip(hr.stages, hr.rows, hr.cols, q_folded.split(widths, dim=-1)):
        patches, stage_means, mix = _stage_windows(x.to(device=lr.device, dtype=f32), rows, cols, hr.size, grid)
        stage_dots = (patches @ q_s[..., None])[..., 0]  # [N, L, K]
        if mix is None:
            sq.append(torch.linalg.vector_norm(patches, dim=-1).square())
        else:
            gram = patches @ patches.transpose(-1, -2)  # [N, L, K, K]
            if mix.dim() == 2:  # one band for all windows: (M G Mᵀ)_jj as one matmul over flattened G
                pairs = (mix[:, :, None] * mix[:, None, :]).flatten(1)  # [p, K²]
                sq.append(gram.flatten(-2) @ pairs.T)
                stage_dots, stage_means = stage_dots @ mix.T, stage_means @ mix.T
            else:
                sq.append(torch.einsum("lpk,nlkm,lpm->nlp", mix, gram, mix))
                stage_dots, stage_means = (torch.einsum("lpk,nlk->nlp", mix, t) for t in (stage_dots, stage_means))
        windows.append((patches, mix))
        dots.append(stage_dots)
        means.append(stage_means)
    # The per-pixel bookkeeping runs on stacked [S, N, L, p] tensors: a few ops instead of a few per stage.
    width = torch.tensor(widths, dtype=f32, device=lr.device).view(-1, 1, 1, 1)
    means = torch.stack(means)
    mu = (means * width).sum(0) / total  # [N, L, p]
    offset = means - mu  # (M t_s)_j - μ_j, [S, N, L, p]
    var = ((torch.stack(sq).sum(0) + (offset.square() * width).sum(0)) / total).clamp_min(0)
    ln_k, ln_v = key[0], value[0]
    rstd_k = torch.rsqrt(var + ln_k.eps)
    rstd_v = rstd_k if ln_v.eps == ln_k.eps else torch.rsqrt(var + ln_v.eps)
    q_sums = torch.stack([q_s.sum(-1, keepdim=True) for q_s in q_folded.split(widths, dim=-1)])  # [S, N, L, 1]
    scores = torch.stack(dots).addcmul(offset, q_sums).sum(0) * rstd_k
    weights = torch.nan_to_num(scores).softmax(dim=-1)  # the original applies nan_to_num to the scores
    u = weights * rstd_v  # [N, L, p]
    shifts = (offset * u).sum(-1, keepdim=True)  # [S, N, L, 1]
    pooled = []
    for (patches, mix), shift in zip(windows, shifts):
        v = u if mix is None else u @ mix if mix.dim() == 2 else torch.einsum("nlp,lpk->nlk", u, mix)
        pooled.append((v[..., None, :] @ patches)[..., 0, :] + shift)
    return _value_out(torch.cat(pooled, dim=-1), value, lr.dtype)


def mine_patches_reference(
    lr: torch.Tensor, hr: torch.Tensor, query: nn.Module, key: nn.Module, value: nn.Module
) -> torch.Tensor:
    """The literal per-window formulation of docs/original.md#patch-info-mining (baseline for tests and benchmarks)."""
    n, num_tokens, dim = lr.shape
    grid = math.isqrt(num_tokens)
    windows = group_windows(hr.to(lr.dtype), grid)
    q = query(lr)
    k = key(windows)
    v = value(windows)
    scores = torch.nan_to_num(q[:, :, None, :] @ (k / dim**0.5).transpose(-1, -2))
    attn = scores.softmax(dim=-1)
    return (attn @ v).mean(dim=2)
