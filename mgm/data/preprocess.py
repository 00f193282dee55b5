"""Turn one training conversation into `input_ids` + `labels` (only the assistant replies supervised).

One generic routine serves every template (docs/original.md#label-masking). The original counted tokens per
template with hand-tuned offsets (BOS, legacy SentencePiece spaces, tokenizers-version quirks) and
silently zeroed a sample when its count disagreed. Here:

1. the conversation is rendered with the template's own `Conversation.get_prompt()`;
2. for each assistant turn the characters it contributes are located by rendering the conversation
   up to that turn (what the turn adds = role header + reply + end-of-turn text);
3. a character position is mapped to a token position as the length of the longest common prefix of
   the ids of the whole prompt and the ids of the prompt cut at that position. This absorbs tokenizer
   merges at the boundaries without any per-template arithmetic.

Supervised = the reply (with the space that separates it from a `USER: `-style header, which
SentencePiece glues to the reply's first word) plus the end-of-turn text the template writes after
it, which is exactly what the original supervises: `</s>` (v1), `" </s>"` (llama_2 /
mistral_instruct), `<|eot_id|>` (llama_3), `<end_of_turn>\\n<eos>` (gemma), `<|im_end|>` (mpt /
chatml_direct), `"\\n"` (plain).

Deviations from the original, on purpose:
- Multi-image samples keep one `<image>` per image (the original collapsed them into one, docs/original.md#fixed-defects),
  also in the `plain` format; an image sample without a tag gets one on its first human turn.
- Templates the original sent through its generic "v0" path (SINGLE style such as `llava_v0`,
  `v0_mmtag`; and `phi_2`, `imgsp_v1`) are rendered with their own `get_prompt()` like every other
  template, i.e. exactly as inference renders them, instead of the original's `### Role: ...\\n` text.
- A sample with no supervised token raises `EmptyTargetError` instead of training on nothing.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch

from mgm.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from mgm.chat_template_conversation import CHAT_TEMPLATE, JinjaConversation, conversation_for
from mgm.conversation import Conversation, SeparatorStyle, get_template
from mgm.data.prompt_ids import tokenizer_image_token

__all__ = [
    "ConversationFormatError",
    "EmptyTargetError",
    "preprocess_multimodal",
    "tokenize_conversation",
    "supervised_char_spans",
]

_ROLE_INDEX = {"human": 0, "gpt": 1}
# Stands in for a reply when rendering, to learn the header/footer a template puts around it.
_SENTINEL = "\x00mgm-reply\x00"


class ConversationFormatError(ValueError):
    """A sample's `conversations` list is malformed (unknown speaker, no alternation, bad value)."""


class EmptyTargetError(ValueError):
    """After masking (and truncation) not a single label is supervised; the caller adds id and path."""


# ---------------------------------------------------------------------------------------------------
# <image> tag placement (original `preprocess_multimodal`)


def preprocess_multimodal(
    conversations: Sequence[dict[str, Any]],
    num_images: int = 1,
    *,
    template_name: str | None = None,
    mm_use_im_start_end: bool = False,
) -> list[dict[str, Any]]:
    """Normalise the `<image>` tags of an image sample; returns a new list (the input is not changed).

    Every turn that mentions `<image>` loses all its tags and is stripped; the first such turn (or the
    first human turn when no turn has a tag) then starts with one `"<image>\\n"` per image, so the
    number of tags always equals `num_images`. For one image tagged in one turn this is exactly the
    original rule. The original instead put one tag on EVERY tagged turn (several images collapsed
    into one tag, or one image given several tags, docs/original.md#fixed-defects) and left untagged samples untagged
    (the image was silently unused).
    Then, as in the original: `mmtag` templates wrap each tag as `<Image><image></Image>`, and
    `mm_use_im_start_end` turns it into `<im_start><image><im_end>`.
    """
    if num_images < 1:
        raise ValueError(f"preprocess_multimodal: num_images must be >= 1, got {num_images}")
    turns = copy.deepcopy(list(conversations))
    tagged = [i for i, turn in enumerate(turns) if DEFAULT_IMAGE_TOKEN in _value(turn, i)]
    for i in tagged:
        turns[i]["value"] = turns[i]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
    if tagged:
        target = tagged[0]
    else:
        # The original silently dropped such images; give the model the image it is paired with.
        humans = [i for i, turn in enumerate(turns) if turn.get("from") == "human"]
        if not humans:
            raise ConversationFormatError("image sample without any human turn to attach the image to")
        target = humans[0]
    turns[target]["value"] = ((DEFAULT_IMAGE_TOKEN + "\n") * num_images + _value(turns[target], target)).strip()

    mmtag = template_name not in (None, CHAT_TEMPLATE) and "mmtag" in get_template(template_name).version
    replacement = DEFAULT_IMAGE_TOKEN
    if mmtag:
        replacement = "<Image>" + DEFAULT_IMAGE_TOKEN + "</Image>"
    if mm_use_im_start_end:
        replacement = replacement.replace(DEFAULT_IMAGE_TOKEN,
                                          DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN)
    if replacement != DEFAULT_IMAGE_TOKEN:
        for turn in turns:
            turn["value"] = turn["value"].replace(DEFAULT_IMAGE_TOKEN, replacement)
    return turns


def _value(turn: Any, index: int) -> str:
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
        raise ConversationFormatError(
            f"turn {index} must be a dict with a string 'value' (and 'from' = 'human' or 'gpt'), got {turn!r:.200}"
        )
    return turn["value"]


# ---------------------------------------------------------------------------------------------------
# rendering + label masking


def _normalise_turns(conversations: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
    """(role index, text) per turn; drops ONE leading non-human turn and checks strict alternation."""
    turns: list[tuple[int, str]] = []
    for i, turn in enumerate(conversations):
        text = _value(turn, i)
        speaker = turn.get("from")
        if speaker not in _ROLE_INDEX:
            raise ConversationFormatError(
                f"turn {i} has 'from' = {speaker!r}; expected 'human' or 'gpt'")
        turns.append((_ROLE_INDEX[speaker], text))
    if turns and turns[0][0] != 0:
        turns = turns[1:]  # the original skips a leading non-human turn
    for j, (role, _text) in enumerate(turns):
        if role != j % 2:
            expected = "human" if j % 2 == 0 else "gpt"
            raise ConversationFormatError(
                f"turns must alternate human/gpt starting with human; turn {j} (after dropping a leading "
                f"gpt turn, if any) should be from {expected!r}")
    if not turns:
        raise ConversationFormatError("conversation has no turns")
    return turns


def _render(template: Conversation, turns: Sequence[tuple[int, str]]) -> str:
    conv = template.copy()  # keeps seeded turns (the `v0` example exchange) in front, as at inference
    for role, text in turns:
        conv.append_message(conv.roles[role], text)
    return conv.get_prompt()


def supervised_char_spans(
    template: Conversation, turns: Sequence[tuple[int, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """Render `turns` and return (prompt, [(start, end) character span of each supervised reply]).

    A span runs from the first character of the reply (or of the spaces just before it) to the end
    of what the template writes after it for that turn (its end-of-turn separator). Empty replies
    (which a template renders as an open turn) have no span.
    """
    prompt = _render(template, turns)
    spans: list[tuple[int, int]] = []
    for k, (role, text) in enumerate(turns):
        if role != 1 or not text:
            continue
        before = _render(template, turns[:k])
        through = _render(template, turns[: k + 1])
        probe = _render(template, list(turns[:k]) + [(1, _SENTINEL)])
        if not (through.startswith(before) and probe.startswith(before) and prompt.startswith(through)):
            raise RuntimeError(f"template {template.version!r} does not render turns incrementally")
        header, _, footer = probe[len(before):].partition(_SENTINEL)
        if through != before + header + text + footer:
            raise RuntimeError(f"template {template.version!r}: cannot locate reply {k} in the rendered prompt")
        # A space between the role header and the reply is supervised with the reply: SentencePiece
        # glues it to the reply's first word ("▁Yes"), and where it stays a lone "▁" token the
        # original supervised that token too. Newlines of a header ("...model\n") stay masked.
        spans.append((len(before) + len(header.rstrip(" ")), len(through)))
    return prompt, spans


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _encoder(tokenizer: Any, has_image: bool) -> Callable[[str], list[int]]:
    if has_image:
        return lambda text: list(tokenizer_image_token(text, tokenizer))
    return lambda text: list(tokenizer(text).input_ids)


def _plain_prompt(turns: Sequence[tuple[int, str]], template: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """Stage-1 `plain` format: the human text becomes just its image tag(s); prompt = tags + answer + sep."""
    if len(turns) != 2 or DEFAULT_IMAGE_TOKEN not in turns[0][1]:
        raise ConversationFormatError(
            "the 'plain' template needs exactly one human turn containing <image> and one gpt turn, "
            f"got {len(turns)} turns")
    # One tag per image (the original always wrote a single "<image>").
    human = DEFAULT_IMAGE_TOKEN * turns[0][1].count(DEFAULT_IMAGE_TOKEN)
    prompt = human + turns[1][1] + template.sep
    return prompt, [(len(human), len(prompt))]


def tokenize_conversation(
    conversations: Sequence[dict[str, Any]],
    tokenizer: Any,
    template_name: str,
    has_image: bool,
    max_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Render, tokenise and mask one conversation.

    Args:
        conversations: `[{"from": "human"|"gpt", "value": str}, ...]`; for image samples already passed
            through `preprocess_multimodal`. A leading gpt turn is dropped (as the original did).
        tokenizer: a Hugging Face tokenizer (its default call adds BOS where the family does).
        template_name: key of `mgm.conversation.conv_templates` (e.g. "vicuna_v1", "llama_3", "plain").
        has_image: tokenise with `tokenizer_image_token`, so each `<image>` becomes -200.
        max_length: truncate ids and labels to this many tokens (None: no truncation).

    Returns:
        input_ids LongTensor [L], labels LongTensor [L] (IGNORE_INDEX = -100 outside the supervised
        replies), and the rendered prompt string.

    Raises:
        UnknownTemplateError: bad template name.
        ConversationFormatError: malformed conversation.
        EmptyTargetError: nothing left to supervise (no/empty replies, or all cut by max_length).
    """
    template = conversation_for(template_name, tokenizer)
    turns = _normalise_turns(conversations)
    if isinstance(template, JinjaConversation):  # the LLM's own template: spans located as a whole
        prompt, spans = template.supervised_spans(turns)
        encode = _encoder(tokenizer, has_image)
    elif template.sep_style == SeparatorStyle.PLAIN:
        prompt, spans = _plain_prompt(turns, template)
        encode = _encoder(tokenizer, True)  # the original always used tokenizer_image_token here
    else:
        prompt, spans = supervised_char_spans(template, turns)
        encode = _encoder(tokenizer, has_image)

    ids = encode(prompt)
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        first = _common_prefix_len(ids, encode(prompt[:start]))
        last = _common_prefix_len(ids, encode(prompt[:end]))
        labels[first:last] = ids[first:last]

    full_len = len(ids)
    truncated = max_length is not None and full_len > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        if not spans:
            why = "it has no non-empty gpt reply"
        elif truncated:
            why = f"every reply lies beyond max_length={max_length} (the sample has {full_len} tokens)"
        else:
            why = "its replies map to no tokens"
        raise EmptyTargetError(
            f"conversation has no supervised token after masking with template {template_name!r}: {why}")
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long), prompt
