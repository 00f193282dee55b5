"""Parsing a large `/v1/chat/completions` body without walking its images.

A chat body of megabytes is nearly always base64 images in `data:` URLs. The JSON parser holds the
interpreter while it walks every one of those bytes, and the worker decodes them later anyway. So,
before parsing, each long `"url": "data:..."` value is cut out of the body (found with byte searches,
which run at memory speed) and replaced by a placeholder with a per-request random part; the small
rest is parsed, and the placeholders of image parts are given their URLs back. A value that cannot be
cut out exactly (it holds an escape, or is not ASCII) stays in place and is parsed as usual, so the
result is the same as parsing the whole body.
"""
from __future__ import annotations

import secrets

from mgm.serve.openai_protocol import ChatCompletionRequest, ImagePart
from mgm.serve.security import parse_json_body

MIN_CUT_BYTES = 64 * 1024  # shorter values are parsed in place
MAX_CUTS = 64  # more images than any worker takes (the rest is parsed in place)
MAX_KEYS_SCANNED = 256  # bounds the Python-level loop over `"url"` keys
_SPACE = b" \t\r\n"


def _skip_space(raw: bytes, at: int) -> int:
    while at < len(raw) and raw[at] in _SPACE:
        at += 1
    return at


def cut_data_urls(raw: bytes) -> tuple[bytes, dict[str, str]]:
    """`raw` with its long `"url": "data:..."` values replaced by placeholders, and placeholder → value.

    An unescaped `"url"` followed by `:` is always an object key in valid JSON (inside a string a quote
    is escaped), so only URL values are cut.
    """
    nonce = secrets.token_hex(8)
    pieces: list[bytes] = []
    values: dict[str, str] = {}
    kept = 0  # raw[:kept] is already in pieces
    at = 0
    for _ in range(MAX_KEYS_SCANNED):
        if len(values) >= MAX_CUTS:
            break
        key = raw.find(b'"url"', at)
        if key < 0:
            break
        at = key + 5
        colon = _skip_space(raw, at)
        if colon >= len(raw) or raw[colon] != ord(":"):
            continue
        start = _skip_space(raw, colon + 1)
        if not raw.startswith(b'"data:', start):
            continue
        end = raw.find(b'"', start + 1)
        if end < 0:
            break
        at = end + 1
        if end - start < MIN_CUT_BYTES or raw.find(b"\\", start, end) >= 0:
            continue
        try:
            value = str(memoryview(raw)[start + 1:end], "ascii")  # no intermediate copy of the slice
        except UnicodeDecodeError:
            continue
        name = f"mgm-cut:{nonce}:{len(values)}"
        values[name] = value
        pieces += [raw[kept:start], b'"', name.encode(), b'"']
        kept = end + 1
    if not values:
        return raw, values
    pieces.append(raw[kept:])
    return b"".join(pieces), values


def parse_chat_request(raw: bytes, model: type[ChatCompletionRequest] = ChatCompletionRequest
                       ) -> ChatCompletionRequest:
    """`parse_json_body(raw, model)`, with the long data URLs of image parts cut out before parsing."""
    small, values = cut_data_urls(raw)
    body = parse_json_body(small, model)
    if values:
        for message in body.messages:
            for part in message.content if isinstance(message.content, list) else ():
                if isinstance(part, ImagePart) and part.image_url.url in values:
                    part.image_url.url = values[part.image_url.url]
    return body
