"""Image-feature cache and KV prefix cache: bounded LRU stores, and generation that never changes with them.

Greedy answers with the caches on must equal the ordinary path's (alone through `engine.stream`, batched
through `ContinuousBatch`), for base, HD, MoE and Gemma checkpoints; an edited image, a changed system
prompt or another template must not reuse what no longer applies; the stores stay under their bounds.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mgm.constants import IMAGE_TOKEN_INDEX
from mgm.conversation import conv_templates, template_for_model_config
from mgm.inference import ContinuousBatch, GenerationParams, InferenceEngine, Request
from mgm.inference.feature_cache import FeatureCache, image_key, view_settings
from mgm.inference.prefix_cache import PrefixCache, expanded_length, shared_items

QUESTIONS = ["describe the picture", "what else do you see?", "and the colours?", "one word please"]


def _image(seed: int, size=(80, 64)) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _engine(loaded, caches: bool, image_bytes: int = 1 << 26, prefix_bytes: int = 1 << 26) -> InferenceEngine:
    tokenizer, model, processor, context_len = loaded
    engine = InferenceEngine(tokenizer, model, processor, context_len)
    if caches:
        engine.use_caches(image_bytes, prefix_bytes)
    return engine


def _conv(engine, system: str | None = None, mode: str | None = None):
    conv = conv_templates[mode or template_for_model_config(engine.model.config, engine.tokenizer)].copy()
    if system is not None:
        conv.system = system
    return conv


def _params(conv, max_new_tokens: int = 10) -> GenerationParams:
    return GenerationParams(temperature=0, max_new_tokens=max_new_tokens, stop=[s for s in conv.stop_strings() if s])


def _chat(engine, image, turns: int = 3, system: str | None = None, mode: str | None = None) -> list[str]:
    """A multi-turn chat as `mgm chat` runs it: the whole history and the image resent every turn."""
    conv = _conv(engine, system, mode)
    answers = []
    for turn in range(turns):
        conv.append_message(conv.roles[0], ("<image>\n" if turn == 0 else "") + QUESTIONS[turn])
        conv.append_message(conv.roles[1], None)
        answer = "".join(engine.stream(Request(conv.get_prompt(), [image], _params(conv)))).strip()
        conv.messages[-1][-1] = answer
        answers.append(answer)
    return answers


# -- the stores -------------------------------------------------------------------------------------------
def test_feature_cache_is_lru_and_bounded_in_bytes():
    one = torch.zeros(4, 8)  # 128 bytes
    cache = FeatureCache(3 * 128)
    for name in "abc":
        cache.put(name, one)
    assert cache.get("a") is not None  # a is now the most recent: b goes first
    cache.put("d", one)
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 3
    assert cache.bytes == 3 * 128 <= cache.max_bytes
    cache.put("huge", torch.zeros(64, 64))  # larger than the whole bound: not kept, nothing evicted
    assert cache.get("huge") is None and len(cache) == 3
    assert cache.stats()["hits"] == 2 and cache.stats()["misses"] == 2


def test_image_key_follows_pixels_and_view():
    image = _image(0)
    edited = image.copy()
    edited.putpixel((3, 5), (1, 2, 3) if image.getpixel((3, 5)) != (1, 2, 3) else (4, 5, 6))
    assert image_key(image, "v") == image_key(_image(0), "v")
    assert image_key(image, "v") != image_key(edited, "v")
    assert image_key(image, "v") != image_key(image, "w")
    assert image_key(image, "v") != image_key(image.convert("L"), "v")


def _kv(length: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(1, 2, length, 4), torch.randn(1, 2, length, 4)) for _ in range(layers)]


def test_prefix_cache_longest_shared_prefix_supersedes_and_bounds():
    cache = PrefixCache(max_bytes=10_000, image_tokens=3)
    assert expanded_length((1, "img", 2), 3) == 5 and shared_items((1, 2, 3), (1, 2, 4)) == 2
    assert cache.store((1, "img", 2), _kv(5))
    entry, n = cache.lookup((1, "img", 2, 7, 8), max_items=4)
    assert entry is not None and n == 3
    assert cache.lookup((1, "other", 2, 7), max_items=3) == (cache._entries[0], 1)  # only the first token
    assert cache.lookup((9, 9), max_items=1) == (None, 0)
    assert cache.lookup((1, "img", 2), max_items=2)[1] == 2  # the caller's cap holds
    assert cache.store((1, "img", 2, 7), _kv(6))  # extends the first entry: replaces it
    assert len(cache) == 1 and not cache.store((1, "img"), _kv(4))  # already covered
    with pytest.raises(ValueError):
        cache.store((5, 6), _kv(3))  # KV and key disagree
    one = 2 * 2 * 2 * 6 * 4 * 4  # bytes of a 6-position entry
    for k in range(40):
        cache.store((100 + k, 1, 2, 3, 4, 5), _kv(6))
        assert cache.bytes <= cache.max_bytes
    assert cache.bytes == one * (10_000 // one) and cache.stats()["entries"] == 10_000 // one


# -- generation is unchanged ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["MGM-Tiny-Vicuna", "MGM-Tiny-Vicuna-HD", "MGM-Tiny-Mixtral", "MGM-Tiny-Gemma-HD",
                                  "MGM-Tiny-LLaMA3"])
def test_multiturn_chat_is_identical_with_caches_and_reuses_them(loaded_models, name):
    loaded = loaded_models(name)
    image = _image(1)
    plain = _chat(_engine(loaded, caches=False), image)
    cached_engine = _engine(loaded, caches=True)
    assert _chat(cached_engine, image) == plain
    stats = cached_engine.caches.stats()
    # turns 2 and 3 reuse the KV of turn 1's prompt and answer: the image is encoded once
    assert stats["prefix_kv"]["hits"] == 2 and stats["prefix_kv"]["misses"] == 1
    assert stats["prefix_kv"]["reused_tokens"] > 2 * cached_engine.num_image_tokens()
    assert stats["image_features"]["misses"] == 1
    # a new conversation about the same image: its features and the shared system prompt are reused
    assert _chat(cached_engine, image, turns=1) == plain[:1]
    assert cached_engine.caches.stats()["prefix_kv"]["hits"] == 3


def _run_batch(engine, requests: list[Request]) -> list[str]:
    batch = ContinuousBatch(engine)
    rows = [batch.new_row(r) for r in requests]
    batch.add(rows[:2])
    batch.step()
    batch.add(rows[2:])  # joins a running batch
    while batch.size:
        batch.step()
    return [row.result.text.strip() for row in rows]


@pytest.mark.parametrize("name", ["MGM-Tiny-Vicuna", "MGM-Tiny-Vicuna-HD", "MGM-Tiny-Mixtral"])
def test_batched_rows_are_identical_with_caches(loaded_models, name):
    loaded = loaded_models(name)
    plain, cached = _engine(loaded, caches=False), _engine(loaded, caches=True)
    first, second = _image(2), _image(3, size=(50, 90))
    conv = _conv(plain)
    conv.append_message(conv.roles[0], "<image>\n" + QUESTIONS[0])
    conv.append_message(conv.roles[1], None)
    turn1 = Request(conv.get_prompt(), [first], _params(conv))
    answer = "".join(cached.stream(turn1)).strip()  # warms both caches
    conv.messages[-1][-1] = answer
    conv.append_message(conv.roles[0], QUESTIONS[1])
    conv.append_message(conv.roles[1], None)
    turn2 = conv.get_prompt()
    text = _conv(plain)
    text.append_message(text.roles[0], "no picture here")
    text.append_message(text.roles[1], None)

    def requests():
        return [Request(turn2, [first], _params(conv, 8)), Request(turn1.prompt, [second], _params(conv, 12)),
                Request(text.get_prompt(), [], _params(text, 6)), Request(turn1.prompt, [first], _params(conv, 9))]

    assert _run_batch(cached, requests()) == _run_batch(plain, requests())
    assert cached.caches.prefixes.hits >= 2


# -- never stale ------------------------------------------------------------------------------------------
def test_edited_image_system_prompt_and_template_are_not_reused(loaded_models):
    loaded = loaded_models("MGM-Tiny-Vicuna")
    image = _image(4)
    edited = image.copy()
    edited.paste((255, 0, 0), (10, 10, 30, 30))
    engine = _engine(loaded, caches=True)
    _chat(engine, image, turns=2)
    before = engine.caches.stats()
    assert _chat(engine, edited, turns=1) == _chat(_engine(loaded, caches=False), edited, turns=1)
    after = engine.caches.stats()
    assert after["image_features"]["misses"] == before["image_features"]["misses"] + 1
    # the edited chat reused the text before its image (system prompt) and nothing from the image on
    conv = _conv(engine)
    conv.append_message(conv.roles[0], "<image>\n" + QUESTIONS[0])
    conv.append_message(conv.roles[1], None)
    ids = engine.encode_prompt(Request(conv.get_prompt(), [edited])).tolist()
    reused = after["prefix_kv"]["reused_tokens"] - before["prefix_kv"]["reused_tokens"]
    assert 0 < reused <= ids.index(IMAGE_TOKEN_INDEX)
    assert _chat(engine, edited, turns=2) == _chat(_engine(loaded, caches=False), edited, turns=2)

    system = "A different assistant answers in riddles."
    assert _chat(engine, image, turns=1, system=system) == _chat(_engine(loaded, caches=False), image, turns=1,
                                                                   system=system)
    mode = next(m for m in ("llava_v1", "vicuna_v1", "plain") if m in conv_templates
                and m != template_for_model_config(engine.model.config, engine.tokenizer))
    assert _chat(engine, image, turns=1, mode=mode) == _chat(_engine(loaded, caches=False), image, turns=1, mode=mode)


def test_memory_stays_under_the_bounds_for_a_stream_of_distinct_images(loaded_models):
    loaded = loaded_models("MGM-Tiny-Vicuna-HD")
    features = loaded[1].get_model().embed_tokens.weight.shape[1] * 4  # bytes per float32 token row
    engine = _engine(loaded, caches=True, image_bytes=3 * 320 * features, prefix_bytes=1_000_000)
    assert engine.num_image_tokens() == 320  # 4 crops and the global view of 64 tokens
    for seed in range(6):
        _chat(engine, _image(10 + seed), turns=1)
        stats = engine.caches.stats()
        assert stats["image_features"]["bytes"] <= stats["image_features"]["max_bytes"]
        assert stats["prefix_kv"]["bytes"] <= stats["prefix_kv"]["max_bytes"]
    stats = engine.caches.stats()
    assert stats["image_features"]["misses"] == 6 and stats["image_features"]["entries"] == 3
    assert 1 <= stats["prefix_kv"]["entries"] <= 2  # each chat's KV is about 0.42 MB here
    assert view_settings(engine.model, engine.image_processor)  # HD settings are part of the key


def test_a_failing_row_fails_alone_in_the_batcher(loaded_models):
    """A prefill that raises joins nothing; the batcher's one-by-one retry then serves the good rows once."""
    import io

    from mgm.inference import DynamicBatcher

    loaded = loaded_models("MGM-Tiny-Vicuna")
    engine = _engine(loaded, caches=True)
    conv = _conv(engine)
    conv.append_message(conv.roles[0], "<image>\n" + QUESTIONS[0])
    conv.append_message(conv.roles[1], None)
    good = Request(conv.get_prompt(), [_image(5)], _params(conv))
    expected = "".join(_engine(loaded, caches=False).stream(good)).strip()
    png = io.BytesIO()
    _image(6).save(png, format="PNG")
    truncated = Image.open(io.BytesIO(png.getvalue()[: len(png.getvalue()) // 2]))  # lazily decoded: fails at prefill
    with DynamicBatcher(engine, max_batch_size=4, batch_window=0.5) as batcher:
        tickets = [batcher.submit(Request(good.prompt, [_image(5)], _params(conv))),
                   batcher.submit(Request(good.prompt, [truncated], _params(conv))),
                   batcher.submit(Request(good.prompt, [_image(5)], _params(conv)))]
        texts = []
        for ticket in tickets:
            try:
                texts.append("".join(ticket.iter_text()).strip())
            except OSError as exc:
                texts.append(type(exc).__name__)
    assert texts == [expected, "OSError", expected]
    assert batcher.rows_run == 2  # each good row joined once
