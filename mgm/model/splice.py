"""Splicing visual tokens into a batch of token embeddings, vectorised (the original's per-row loop, as one gather).

Every `IMAGE_TOKEN_INDEX` in a row is replaced by the T feature rows of the next image, in batch order.
Padding (attention mask False) is dropped first, so rows are re-packed: each source position becomes
one slot (text) or T slots (image); rows are cut to `max_length` (head kept) and re-padded on the
requested side. Equivalent to the loop in the original's `prepare_inputs_labels_for_multimodal`
(mgm/model/mgm_arch.py), including its batch-global image counter: a row without `<image>` may take
one placeholder image (the original's text-only training rows do), which it then skips.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mgm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mgm.errors import UserError


@dataclass(frozen=True)
class ImageSlots:
    """Which image block each `<image>` token takes. `index`: [B, L] long, -1 where no image."""

    index: torch.Tensor
    n_tokens: int
    n_text_rows: int


def assign_images(input_ids: torch.Tensor, attention_mask: torch.Tensor, n_images: int) -> ImageSlots:
    """Map `<image>` tokens ([B, L] ids, bool mask) to image blocks, or stop naming both counts.

    Accepted: one image per `<image>` token plus one placeholder per text-only row (the original's
    contract), or exactly one per `<image>` token (text-only rows take none).
    """
    is_image = (input_ids == IMAGE_TOKEN_INDEX) & attention_mask
    per_row = is_image.sum(dim=1)
    n_tokens, n_text_rows = int(per_row.sum()), int((per_row == 0).sum())
    if n_images == n_tokens + n_text_rows:
        taken = per_row.clamp(min=1)  # a text-only row consumes its placeholder
    elif n_images == n_tokens:
        taken = per_row
    else:
        extra = f" and {n_text_rows} text-only row(s), which may take one placeholder image each" if n_text_rows else ""
        raise UserError(f"the batch has {n_tokens} <image> token(s){extra}, but {n_images} image(s) were given; "
                        "pass one image per <image> token, in row order")
    first = torch.cumsum(taken, dim=0) - taken  # index of each row's first image block
    rank_in_row = torch.cumsum(is_image.long(), dim=1) - 1
    index = torch.where(is_image, first[:, None] + rank_in_row, torch.full_like(rank_in_row, -1))
    return ImageSlots(index, n_tokens, n_text_rows)


def splice(text_embeds: torch.Tensor, features: torch.Tensor, slots: ImageSlots, attention_mask: torch.Tensor,
           labels: torch.Tensor, max_length: int | None, padding_side: str
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-pack rows with image features in place of their `<image>` tokens.

    text_embeds [B, L, H] (embeddings of every position; pads and `<image>` rows are never read),
    features [N, T, H], attention_mask [B, L] bool, labels [B, L].
    Returns (embeds [B, L', H], labels [B, L'] with IGNORE_INDEX on image and pad slots,
    mask [B, L'] bool, positions [B, L'] long: 0..n-1 on real slots, 0 on pads).
    """
    batch, length, dim = text_embeds.shape
    device = text_embeds.device
    per_image = features.shape[1]
    image_index = slots.index.to(device)
    mask = attention_mask.to(device)
    widths = torch.where(image_index >= 0, per_image, 1) * mask  # slots each source position expands to
    lengths = widths.sum(dim=1)
    if max_length is not None:
        lengths = lengths.clamp(max=max_length)
    out_len = int(lengths.max())

    # Expand: one entry per slot, in row-major order; `src` is its source position in [B·L].
    flat_widths = widths.flatten()
    src = torch.repeat_interleave(torch.arange(batch * length, device=device), flat_widths)
    row = src // length
    slot_starts = torch.cumsum(flat_widths, dim=0) - flat_widths
    row_starts = torch.cumsum(widths.sum(dim=1), dim=0) - widths.sum(dim=1)
    sub = torch.arange(src.shape[0], device=device) - slot_starts[src]  # t-th feature row of an image
    pos = slot_starts[src] - row_starts[row] + sub  # position inside the re-packed row
    keep = pos < lengths[row]
    src, row, sub, pos = src[keep], row[keep], sub[keep], pos[keep]

    img = image_index.flatten()[src]
    is_img = img >= 0
    # One value table holding every text row and every feature row: the features stay in the graph
    # even when no slot reads them (text-only batches), so under ZeRO-3 every rank runs the same
    # backward ops through projector and towers, or gradient reduction waits forever.
    values = torch.cat([text_embeds.reshape(-1, dim), features.reshape(-1, dim).to(device)], dim=0)
    pick = torch.where(is_img, batch * length + img.clamp(min=0) * per_image + sub, src)

    offset = (out_len - lengths) if padding_side == "left" else torch.zeros_like(lengths)
    dest = row * out_len + offset[row] + pos
    embeds = values.new_zeros((batch * out_len, dim))
    embeds[dest] = values[pick]
    ignore = torch.full_like(src, IGNORE_INDEX, dtype=labels.dtype)
    new_labels = labels.new_full((batch * out_len,), IGNORE_INDEX)
    new_labels[dest.to(labels.device)] = torch.where(is_img, ignore, labels.to(device).flatten()[src]).to(labels.device)
    new_mask = torch.zeros(batch * out_len, dtype=torch.bool, device=attention_mask.device)
    new_mask[dest.to(attention_mask.device)] = True
    positions = torch.zeros(batch * out_len, dtype=torch.long, device=device)
    positions[dest] = pos
    return (embeds.view(batch, out_len, dim), new_labels.view(batch, out_len),
            new_mask.view(batch, out_len), positions.view(batch, out_len))
