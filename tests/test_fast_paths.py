"""The inference fast paths compute the same functions as the plain ones: factored mining, HD mining
on one grid, oneDNN linears, the ConvNeXt/CLIP no-grad layers."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mgm.model import fast_linear
from mgm.model.mining import (
    build_mining_projectors,
    crops_to_grid,
    grid_to_crops,
    mine_patches,
    mine_patches_reference,
)
from mgm.model.vision.multiscale import MultiScaleMap, bilinear_matrix

DIMS = (8, 16, 32, 64)


@pytest.fixture()
def modules():
    torch.manual_seed(0)
    mods = build_mining_projectors(16, sum(DIMS))
    for m in mods.values():  # non-trivial LayerNorm affine so the folding is exercised
        m[0].weight.data.uniform_(0.5, 1.5)
        m[0].bias.data.normal_(0, 0.3)
    return tuple(mods[n] for n in ("vlm_uni_query_projector", "vlm_uni_aux_projector", "vlm_uni_val_projector"))


def stages(batch: int, side: int, offset: float = 1.5) -> list[torch.Tensor]:
    return [torch.randn(batch, c, side // 2**i, side // 2**i) * 3 + offset for i, c in enumerate(DIMS)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_bilinear_matrix_reproduces_interpolate():
    x = torch.randn(2, 3, 5, 7)
    out = torch.einsum("hi,ncij,wj->nchw", bilinear_matrix(5, 12), x, bilinear_matrix(7, 9))
    assert torch.allclose(out, F.interpolate(x, size=(12, 9), mode="bilinear", align_corners=False), atol=1e-6)


@pytest.mark.parametrize(("side", "grid"), [(16, 8), (16, 4), (32, 8), (24, 4), (16, 16)])
def test_factored_mining_equals_literal(modules, side, grid):
    torch.manual_seed(side + grid)
    hr = MultiScaleMap.upsampled(stages(2, side))
    lr = torch.randn(2, grid * grid, 16)
    with torch.no_grad():
        assert rel(mine_patches(lr, hr, *modules), mine_patches_reference(lr, hr.dense(), *modules)) < 1e-5
        half = hr.resized((side // 2, side // 2))  # the HD global view: a resize of the resized stack
        lr_half = torch.randn(2, (grid // 2) ** 2, 16)
        assert rel(mine_patches(lr_half, half, *modules), mine_patches_reference(lr_half, half.dense(), *modules)) < 1e-5


def test_factored_mining_is_stable_with_large_channel_means(modules):
    """Stage pixels are centred before any square is taken: a large common offset costs no accuracy."""
    torch.manual_seed(3)
    hr = MultiScaleMap.upsampled(stages(1, 16, offset=300.0))
    lr = torch.randn(1, 64, 16)
    with torch.no_grad():
        ref = mine_patches_reference(lr.double(), hr.dense().double(), *(m.double() for m in modules))
        ours = mine_patches(lr, hr, *(m.float() for m in modules))
    assert rel(ours.double(), ref) < 1e-5


def test_factored_mining_has_gradients(modules):
    hr = MultiScaleMap.upsampled([s.requires_grad_() for s in stages(1, 16)])
    lr = torch.randn(1, 16, 16, requires_grad=True)
    mine_patches(lr, hr, *modules).square().sum().backward()
    assert lr.grad is not None and all(s.grad is not None for s in hr.stages)
    assert modules[2][1].weight.grad is not None


def test_hd_crops_mined_on_one_grid_equal_crop_by_crop(modules):
    torch.manual_seed(4)
    g, b = 2, 2
    hr = MultiScaleMap.upsampled(stages(b, 32))
    crops = torch.randn(b * g * g, 16, 16)  # 4x4 LR tokens per crop
    dense = hr.dense()
    c, hs, ws = dense.shape[1:]
    hr_crops = dense.view(b, c, g, hs // g, g, ws // g).permute(0, 2, 4, 1, 3, 5).reshape(b * g * g, c, hs // g, ws // g)
    assert torch.equal(grid_to_crops(crops_to_grid(crops, g), g), crops)
    with torch.no_grad():
        ours = grid_to_crops(mine_patches(crops_to_grid(crops, g), hr, *modules), g)
        ref = mine_patches_reference(crops, hr_crops, *modules)
    assert rel(ours, ref) < 1e-5


def test_fast_linear_equals_f_linear_and_keeps_autograd():
    torch.manual_seed(5)
    layer = torch.nn.Linear(24, 40)
    x = torch.randn(3, 7, 24)
    with torch.no_grad():
        assert torch.allclose(fast_linear.linear(x, layer), F.linear(x, layer.weight, layer.bias), atol=1e-5)
        assert torch.allclose(fast_linear.linear(x, layer, gelu=True), F.gelu(layer(x)), atol=1e-5)
        one_row = torch.randn(1, 1, 24)  # a decoding step
        assert torch.allclose(fast_linear.linear(one_row, layer), F.linear(one_row, layer.weight, layer.bias),
                              atol=1e-5)
        plan = fast_linear.kernel_plan(torch.float32)
        assert fast_linear._kernel(x, layer.weight) is fast_linear.KERNELS[plan["few"]]  # 21 rows
        assert fast_linear._kernel(one_row, layer.weight) is fast_linear.KERNELS[plan["one"]]
        with fast_linear.stock_linears():  # the benchmarks' reference: F.linear inside the block only
            assert fast_linear._kernel(x, layer.weight) is fast_linear.KERNELS["stock"]
    x.requires_grad_()
    assert fast_linear._kernel(x, layer.weight) is fast_linear.KERNELS["stock"]  # a gradient is needed
    fast_linear.linear(x, layer).sum().backward()
    assert torch.allclose(layer.weight.grad, x.detach().sum((0, 1)).expand(40, 24), atol=1e-4)


def test_convnext_no_grad_path_equals_stock_blocks():
    from mgm.model.vision.convnext import ConvNeXtSpec, ConvNeXtTower, fast_block

    torch.manual_seed(6)
    tower = ConvNeXtTower(ConvNeXtSpec((1, 2, 1, 1), DIMS, ls_init_value=0.5)).eval()
    # every block of the installed timm takes the fused path (timm >= 1.0 builds them with its own GELU)
    assert all(fast_block(block) for stage in tower.vision_stages for block in stage.blocks)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fast = tower.stage_maps(x)
    with torch.enable_grad():
        stock = tower.stage_maps(x)  # frozen tower, grad mode: the timm blocks' own forward
    assert all(torch.allclose(a, b.detach(), atol=1e-5) for a, b in zip(fast, stock))
    assert tower(x).shape == (2, sum(DIMS), 16, 16)


def test_growing_cache_decodes_like_the_dynamic_cache(monkeypatch):
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from mgm.model import kv_cache

    monkeypatch.setattr(kv_cache, "MIN_ROOM", 2)  # reallocate early and often

    torch.manual_seed(7)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=64)).eval()
    ids = torch.randint(0, 64, (2, 5))
    runs = []
    with torch.no_grad():
        for cache in (DynamicCache(), kv_cache.growing_cache()):
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
            tokens, logits = [], []
            for step in range(40):  # several reallocations
                nxt = out.logits[:, -1].argmax(-1)
                tokens.append(nxt)
                logits.append(out.logits[:, -1])
                out = model(input_ids=nxt[:, None], past_key_values=out.past_key_values, use_cache=True)
                if step == 3:  # rows leaving, as ContinuousBatch does: keys/values reassigned
                    for layer in out.past_key_values.layers:
                        layer.keys, layer.values = layer.keys[:1], layer.values[:1]
                    out.logits = out.logits[:1]
            runs.append((torch.cat(tokens), torch.cat(logits), out.past_key_values.get_seq_length()))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][2] == runs[1][2]
    assert torch.allclose(runs[0][1], runs[1][1], atol=1e-5)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_with_the_growing_cache_matches_the_stock_cache(monkeypatch, num_beams):
    """What InferenceEngine.generate_kwargs hands `model.generate`: same tokens, greedy and beam search
    (beams reorder the cache through the keys/values setters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mgm.model import kv_cache
    from mgm.model.arch import cache_keyword

    monkeypatch.setattr(kv_cache, "MIN_ROOM", 3)
    torch.manual_seed(8)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=64)).eval()
    ids = torch.randint(1, 64, (2, 6))
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, num_beams=num_beams, pad_token_id=0)
    with torch.no_grad():
        stock = model.generate(ids, **kwargs)
        cache = kv_cache.growing_cache()
        grown = model.generate(ids, **kwargs, **{cache_keyword(): cache})
    assert torch.equal(stock, grown)
    assert all(isinstance(layer, kv_cache.GrowingLayer) for layer in cache.layers) and cache.layers
