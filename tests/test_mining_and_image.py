"""Patch info mining equals the literal formula; image preprocessing follows docs/original.md#image-preprocessing exactly."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mgm.data.image import ImageProcessor, expand2square, image_to_tensors, open_image
from mgm.errors import UserError
from mgm.model.mining import build_mining_projectors, group_windows, mine_patches


def literal_mining(x, hr, q_proj, k_proj, v_proj):
    """docs/original.md#patch-info-mining written out step by step (the test's own reference)."""
    n, l, d = x.shape
    p = int(math.sqrt(l))
    c, hs, ws = hr.shape[1:]
    ps = ws // p
    a = hr.permute(0, 2, 3, 1).reshape(n, p, ps, p, ps, c).permute(0, 1, 3, 2, 4, 5).reshape(n, p * p, ps * ps, c)
    q = q_proj(x)
    k = k_proj(a)
    v = v_proj(a)
    out = torch.zeros(n, l, d)
    for b in range(n):
        for t in range(l):
            scores = (k[b, t] / d ** 0.5) @ q[b, t]
            w = torch.softmax(torch.nan_to_num(scores), dim=0)
            out[b, t] = (w[:, None] * v[b, t]).sum(0)
    return out


@pytest.fixture()
def mining_modules():
    torch.manual_seed(0)
    mods = build_mining_projectors(16, 24)
    for m in mods.values():  # non-trivial LayerNorm affine so folding is exercised
        m[0].weight.data.uniform_(0.5, 1.5)
        m[0].bias.data.normal_(0, 0.3)
    return mods


def test_mining_matches_literal_formula(mining_modules):
    torch.manual_seed(1)
    x = torch.randn(2, 16, 16)
    hr = torch.randn(2, 24, 12, 12) * 2 + 0.5
    q, k, v = (mining_modules[n] for n in ("vlm_uni_query_projector", "vlm_uni_aux_projector", "vlm_uni_val_projector"))
    ours = mine_patches(x, hr, q, k, v)
    ref = literal_mining(x, hr, q, k, v)
    assert ours.shape == (2, 16, 16)
    rel = (ours - ref).norm() / ref.norm()
    assert rel < 1e-5, rel


def test_group_windows_pairs_tokens_with_their_hr_window():
    hr = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    w = group_windows(hr, grid=2)  # 2x2 LR tokens, 2x2 HR windows
    assert w.shape == (2, 4, 4, 1)
    # token (row 0, col 1) covers HR rows 0-1, cols 2-3
    assert w[0, 1, :, 0].tolist() == [2.0, 3.0, 6.0, 7.0]
    assert w[1, 2, :, 0].tolist() == [24.0, 25.0, 28.0, 29.0]


def test_processor_matches_transformers_pil_clip_processor(tmp_path):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    ref = CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    ours = ImageProcessor.for_image_size(24)
    expected = torch.as_tensor(np.asarray(ref.preprocess(image, return_tensors="np")["pixel_values"][0]))
    got = ours.preprocess_one(image)
    assert got.shape == (3, 24, 24)
    assert torch.allclose(got, expected, atol=1e-5)


def test_expand2square_pads_with_mean_colour():
    img = Image.new("RGB", (4, 2), (255, 0, 0))
    sq = expand2square(img, ImageProcessor().background)
    assert sq.size == (4, 4)
    assert ImageProcessor().background == (122, 116, 104)
    assert sq.getpixel((0, 0)) == (122, 116, 104) and sq.getpixel((0, 1)) == (255, 0, 0)


def test_hr_first_lr_by_bilinear_and_hd_crop_order():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    proc = ImageProcessor.for_image_size(8)
    lr, hr = image_to_tensors(image, proc, aspect_ratio="pad", image_size_aux=32, grid=1)
    expected_hr = proc.at_size(32).preprocess_one(expand2square(image, proc.background))
    assert torch.equal(hr, expected_hr)
    assert torch.equal(lr, F.interpolate(hr[None], size=[8, 8], mode="bilinear", align_corners=False)[0])
    lr_hd, hr_hd = image_to_tensors(image, proc, aspect_ratio="pad", image_size_aux=32, grid=2, global_view=True)
    full = F.interpolate(hr_hd[None], size=[16, 16], mode="bilinear", align_corners=False)[0]
    assert lr_hd.shape == (5, 3, 8, 8)
    assert torch.equal(lr_hd[1], full[:, 0:8, 8:16])  # crop (row 0, col 1)
    assert torch.equal(lr_hd[2], full[:, 8:16, 0:8])  # crop (row 1, col 0)
    assert torch.equal(lr_hd[4], F.interpolate(full[None], size=[8, 8], mode="bilinear", align_corners=False)[0])


def test_bad_images_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UserError, match="not a readable image"):
        open_image(tmp_path / "text.png")
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(UserError, match="trunc.png"):
        open_image(tmp_path / "trunc.png")
    with pytest.raises(UserError, match="pixels"):
        open_image(good, max_pixels=100)
    with pytest.raises(UserError, match="remote"):
        open_image("http://example.invalid/x.png")
