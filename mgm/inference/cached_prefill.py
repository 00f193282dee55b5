"""Prefill of one request through the engine's caches: image features by content, KV by shared prefix.

`EngineCaches` holds an engine's image-feature cache and KV prefix cache (either may be off).
`prefill_row` builds the request's sequence key (token ids, one content hash per image), takes the
longest cached prefix's KV, embeds only the rest (encoding only images not cached, in one batch) and
runs the model on it; the result joins a `ContinuousBatch` like a freshly prefilled row. When the row
leaves, `remember` stores its prompt and generated tokens' KV, so the next turn of a chat (which resends
this one's prompt and answer) prefills only its new message.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mgm.constants import IMAGE_TOKEN_INDEX
from mgm.inference.feature_cache import FeatureCache, image_key, view_settings
from mgm.inference.prefix_cache import Item, PrefixCache, expanded_length
from mgm.model.arch import cache_keyword, output_cache
from mgm.model.kv_cache import growing_cache

MiB = 1 << 20
DEFAULT_IMAGE_CACHE_MB = 256
DEFAULT_PREFIX_CACHE_MB = 1024


class EngineCaches:
    """An engine's caches: image features (`image_bytes`, 0 = off) and KV prefixes (`prefix_bytes`, 0 = off)."""

    def __init__(self, engine, image_bytes: int = DEFAULT_IMAGE_CACHE_MB * MiB,
                 prefix_bytes: int = DEFAULT_PREFIX_CACHE_MB * MiB) -> None:
        self.features = FeatureCache(image_bytes) if image_bytes > 0 else None
        self.prefixes = PrefixCache(prefix_bytes, engine.num_image_tokens()) if prefix_bytes > 0 else None
        self.view = view_settings(engine.model, engine.image_processor) if engine.model.get_vision_tower() else ""

    def stats(self) -> dict[str, dict[str, int] | None]:
        return {"image_features": self.features.stats() if self.features is not None else None,
                "prefix_kv": self.prefixes.stats() if self.prefixes is not None else None}

    def describe(self) -> str:
        """One log line: hits, misses and bytes of each cache."""
        parts = []
        for name, cache in (("image cache", self.features), ("prefix cache", self.prefixes)):
            if cache is None:
                parts.append(f"{name} off")
            else:
                s = cache.stats()
                parts.append(f"{name} {s['hits']} hits / {s['misses']} misses, "
                             f"{s['bytes'] / MiB:.1f} of {s['max_bytes'] / MiB:.0f} MiB")
        return "; ".join(parts)


@dataclass
class RowKey:
    """A prefilled row's sequence key and the tokens generated since (the last one not yet fed)."""

    key: tuple[Item, ...]
    length: int  # positions the prompt occupies
    generated: list[int] = field(default_factory=list)


@dataclass
class Prefilled:
    """A row prefilled through the caches, ready to join a ContinuousBatch."""

    cache: object  # the row's DynamicCache [1, heads, length, dim] per layer
    mask: torch.Tensor  # [1, length] ones
    next_position: torch.Tensor  # [1]
    logits: torch.Tensor  # [1, V], the last position's
    row_key: RowKey


def request_key(engine, request) -> tuple[Item, ...]:
    """Token ids with each image token replaced by the image's content hash."""
    ids = engine.encode_prompt(request).tolist()
    hashes = iter(image_key(image, engine.caches.view) for image in request.images)
    return tuple(next(hashes) if t == IMAGE_TOKEN_INDEX else t for t in ids)


def image_features(engine, images: list, keys: list[str]) -> list[torch.Tensor]:
    """Features [T, H] per image: cached ones looked up, the rest encoded in one batch (and cached)."""
    cache = engine.caches.features
    found = [cache.get(k) if cache is not None else None for k in keys]
    missing = [i for i, f in enumerate(found) if f is None]
    if missing:
        lr, hr = engine.image_tensors([images[i] for i in missing])
        encoded = engine.model.encode_images(lr, hr)
        for j, i in enumerate(missing):
            found[i] = encoded[j]
            if cache is not None:
                cache.put(keys[i], encoded[j])
    return found


def embed_items(engine, items: tuple[Item, ...], images: dict[str, object]) -> torch.Tensor:
    """Input embeddings [n, H] of a run of items (images spliced in as the model's own splice does)."""
    model = engine.model
    embed = model.get_model().embed_tokens
    image_items = [item for item in items if isinstance(item, str)]
    feats = dict(zip(image_items, image_features(engine, [images[k] for k in image_items], image_items)))
    scale = getattr(embed, "scalar_embed_scale", None)
    pieces, text = [], []

    def flush() -> None:
        if text:
            pieces.append(embed(torch.tensor(text, dtype=torch.long, device=engine.device)))
            text.clear()

    for item in items:
        if isinstance(item, str):
            flush()
            f = feats[item]
            if scale is not None and scale != 1.0:
                f = f * torch.tensor(scale, dtype=f.dtype)
            pieces.append(f.to(embed.weight.device))
        else:
            text.append(item)
    flush()
    return torch.cat(pieces, dim=0)


def prefill_row(engine, request) -> Prefilled | None:
    """Prefill one request through the caches (None: it needs the ordinary path, e.g. a cut prompt)."""
    caches = engine.caches
    key = request_key(engine, request)
    tokens_per_image = engine.num_image_tokens()
    length = expanded_length(key, tokens_per_image)
    limit = getattr(engine.model.mgm_settings, "model_max_length", None)
    if limit is not None and length > limit:  # the model's splice would cut it: leave that to the model
        return None
    images = dict(zip((k for k in key if isinstance(k, str)), request.images))
    entry, reused_items = (None, 0)
    if caches.prefixes is not None:
        # at least the last item is prefilled: its logits give the first new token
        entry, reused_items = caches.prefixes.lookup(key, len(key) - 1)
    reused = expanded_length(key[:reused_items], tokens_per_image)
    model = engine.model
    with engine.lock, torch.inference_mode():
        cache = growing_cache()
        if entry is not None:
            for index, (k, v) in enumerate(entry.layers):
                cache.update(k[:, :, :reused], v[:, :, :reused], index)
        embeds = embed_items(engine, key[reused_items:], images)[None]
        mask = torch.ones((1, length), dtype=torch.long, device=embeds.device)
        positions = torch.arange(reused, length, device=embeds.device)[None]
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                    use_cache=True, logits_to_keep=1, **{cache_keyword(): cache})
        cache = output_cache(out)
    if caches.prefixes is not None:
        caches.prefixes.count_prefill(reused, length - reused)
        caches.prefixes.store(key, [(layer.keys, layer.values) for layer in cache.layers])
    return Prefilled(cache, mask, torch.tensor([length], device=mask.device), out.logits[:, -1, :],
                     RowKey(key, length))


def remember(engine, row_key: RowKey, cache, row_index: int, columns: int) -> None:
    """Store a leaving row's KV (its last `columns` cache columns: prompt plus fed generated tokens)."""
    prefixes = engine.caches.prefixes if engine.caches is not None else None
    fed = columns - row_key.length
    if prefixes is None or fed <= 0 or fed > len(row_key.generated):
        return
    key = row_key.key + tuple(row_key.generated[:fed])
    layers = [(layer.keys[row_index:row_index + 1, :, -columns:], layer.values[row_index:row_index + 1, :, -columns:])
              for layer in cache.layers]
    prefixes.store(key, layers)
