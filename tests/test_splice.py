"""The vectorised splice equals the original's per-row loop (padding anywhere, several images per row,
text-only rows with and without placeholders, truncation, both padding sides), counts are checked with
an error naming both, text-only batches keep the image branch in the graph (ZeRO-3), and a checkpoint
with an HR tower refuses `images` without `images_aux`."""
from __future__ import annotations

import pytest
import torch

from mgm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mgm.errors import UserError
from mgm.model.splice import assign_images, splice


def loop_reference(text_embeds, features, ids, mask, labels, max_length, side, placeholders):
    """The original's algorithm, row by row, written from its description."""
    rows_e, rows_l, k = [], [], 0
    for b in range(ids.shape[0]):
        keep = mask[b]
        row_ids, row_e, row_l = ids[b][keep], text_embeds[b][keep], labels[b][keep]
        pieces, plabels = [], []
        if not (row_ids == IMAGE_TOKEN_INDEX).any():
            k += 1 if placeholders else 0
        for i, tok in enumerate(row_ids.tolist()):
            if tok == IMAGE_TOKEN_INDEX:
                pieces.append(features[k])
                plabels.append(torch.full((features.shape[1],), IGNORE_INDEX, dtype=labels.dtype))
                k += 1
            else:
                pieces.append(row_e[i: i + 1])
                plabels.append(row_l[i: i + 1])
        e, lab = torch.cat(pieces), torch.cat(plabels)
        if max_length is not None:
            e, lab = e[:max_length], lab[:max_length]
        rows_e.append(e)
        rows_l.append(lab)
    n = max(e.shape[0] for e in rows_e)
    out_e = torch.zeros(len(rows_e), n, text_embeds.shape[-1])
    out_l = torch.full((len(rows_e), n), IGNORE_INDEX, dtype=labels.dtype)
    out_m = torch.zeros(len(rows_e), n, dtype=torch.bool)
    out_p = torch.zeros(len(rows_e), n, dtype=torch.long)
    for b, (e, lab) in enumerate(zip(rows_e, rows_l)):
        span = slice(n - e.shape[0], n) if side == "left" else slice(0, e.shape[0])
        out_e[b, span], out_l[b, span], out_m[b, span] = e, lab, True
        out_p[b, span] = torch.arange(e.shape[0])
    return out_e, out_l, out_m, out_p


def random_batch(gen, rows=4, length=9, dim=5, per_image=3):
    ids = torch.randint(1, 50, (rows, length), generator=gen)
    mask = torch.rand(rows, length, generator=gen) > 0.2
    mask[:, length // 2] = True
    for b in range(rows - 1):  # the last row stays text-only
        where = torch.randperm(length, generator=gen)[: 1 + b % 3]
        ids[b, where] = IMAGE_TOKEN_INDEX
    ids[-1][ids[-1] == IMAGE_TOKEN_INDEX] = 7
    labels = torch.where(torch.rand(rows, length, generator=gen) > 0.3, ids, torch.full_like(ids, IGNORE_INDEX))
    return ids, mask, labels, torch.randn(rows, length, dim, generator=gen), per_image


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                         reason="needs CUDA")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("max_length", [None, 7])
@pytest.mark.parametrize("placeholders", [True, False])
def test_vectorised_splice_equals_the_row_loop(side, max_length, placeholders, device):
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        ids, mask, labels, text, per_image = random_batch(gen)
        n_tokens = int(((ids == IMAGE_TOKEN_INDEX) & mask).sum())
        n_text = int((((ids == IMAGE_TOKEN_INDEX) & mask).sum(1) == 0).sum())
        features = torch.randn(n_tokens + (n_text if placeholders else 0), per_image, text.shape[-1], generator=gen)
        slots = assign_images(ids.to(device), mask.to(device), features.shape[0])
        ours = splice(text.to(device), features.to(device), slots, mask.to(device), labels.to(device), max_length, side)
        ref = loop_reference(text, features, ids, mask, labels, max_length, side, placeholders)
        for a, b in zip(ours, ref):
            assert a.device.type == device and a.shape == b.shape and torch.equal(a.cpu(), b)


def test_count_mismatch_names_both_counts():
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 2, IMAGE_TOKEN_INDEX], [1, 2, 3, 4]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    with pytest.raises(UserError, match=r"2 <image> token\(s\) and 1 text-only row.*but 1 image\(s\)"):
        assign_images(ids, mask, 1)
    with pytest.raises(UserError, match=r"2 <image> token\(s\), but 4 image\(s\)"):
        assign_images(ids[:1], mask[:1], 4)
    assert assign_images(ids, mask, 3).index[0].tolist() == [-1, 0, -1, 1]
    assert assign_images(ids, mask, 2).index[0].tolist() == [-1, 0, -1, 1]


def test_padding_hides_image_tokens():
    ids = torch.tensor([[IMAGE_TOKEN_INDEX, 5, IMAGE_TOKEN_INDEX]])
    mask = torch.tensor([[False, True, True]])
    assert assign_images(ids, mask, 1).n_tokens == 1


def _prompt_ids(tok, text):
    from mgm.mm_utils import tokenizer_image_token

    return tokenizer_image_token(text, tok, return_tensors="pt")[None]


def test_model_splice_errors_and_text_only_graph(loaded_models):
    tok, model, proc, _ = loaded_models("MGM-Tiny-Vicuna")
    side = model.mgm_settings.image_size_aux
    images, aux = torch.randn(2, 3, 32, 32), torch.randn(2, 3, side, side)
    ids = _prompt_ids(tok, "<image>\nWhat is it?")
    with pytest.raises(UserError, match=r"1 <image> token\(s\), but 2 image\(s\)"):
        model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, images, aux)
    with pytest.raises(UserError, match="images_aux.*images_to_batch"):
        model.generate(ids, images=images[:1], max_new_tokens=1)
    with pytest.raises(UserError, match="1 images but 2 images_aux"):
        model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, images[:1], aux)

    # A text-only batch with its placeholder image: the projector still gets a (zero) gradient, so
    # every ZeRO-3 rank runs the same backward.
    params = list(model.get_model().mm_projector.parameters()) + [model.get_model().embed_tokens.weight]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        text_ids = _prompt_ids(tok, "Just text.")
        out = model(input_ids=text_ids, labels=text_ids, images=images[:1], images_aux=aux[:1])
        out.loss.backward()
        grads = [p.grad for p in params[:-1]]
        assert all(g is not None for g in grads) and all(float(g.abs().sum()) == 0.0 for g in grads)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
            p.grad = None
