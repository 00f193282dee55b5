"""Prompt templates: the `Conversation` class and the `conv_templates` table of the original MGM.

A `Conversation` holds a system text, two role names and the list of turns, and renders them into the
exact prompt string the released checkpoints were trained on (`get_prompt`). The strings and the
rendering rules are a compatibility contract (docs/original.md#templates): change nothing in them without a
golden test.

Never mutate the shared entries of `conv_templates` (or `default_conversation`): take a private copy
with `get_template(name)` (or `conv_templates[name].copy()`, as the original code does).

Message forms accepted in `messages` (each item is `[role, message]`):
- a string;
- None or "" (an open turn: the model is to continue from the role header);
- `(text, PIL.Image, process_mode)` for a user turn carrying an image (Gradio);
- `(text, image_base64)` for an assistant turn carrying a generated image.
"""
from __future__ import annotations

import dataclasses
from enum import Enum, auto
from typing import Any

from mgm.errors import UserError

__all__ = [
    "SeparatorStyle",
    "Conversation",
    "conv_templates",
    "default_conversation",
    "get_template",
    "template_for_model_config",
    "UnknownTemplateError",
]


class SeparatorStyle(Enum):
    """How turns are joined into one prompt string (see `Conversation.get_prompt`)."""

    SINGLE = auto()
    TWO = auto()
    MPT = auto()
    PLAIN = auto()
    LLAMA_2 = auto()
    LLAMA_3 = auto()
    GEMMA = auto()


class UnknownTemplateError(UserError, KeyError):
    """A conversation-template name that is not a key of `conv_templates`."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def _message_text(message: Any) -> str:
    """The text of a message in any of its accepted forms (str or tuple whose first item is the text)."""
    if isinstance(message, tuple):
        return message[0]
    return message


@dataclasses.dataclass
class Conversation:
    """All state of one chat: system text, role names, turns, and the rendering style.

    Field names and defaults are those of the original class, so code written against it keeps working.
    """

    system: str
    roles: tuple[str, str]
    messages: list
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    skip_next: bool = False

    # ------------------------------------------------------------------ rendering
    def _messages_for_prompt(self) -> list[tuple[str, Any]]:
        """Turns to render, with the first turn's image tuple turned into text (original rule).

        If the first message is a `(text, image, mode)` tuple, every `<image>` is removed from its text;
        `mmtag` versions then get two leading turns announcing the image, the others get `<image>\\n`
        in front of the text. The stored messages are never modified.
        """
        messages = [(role, message) for role, message in self.messages]
        if messages and isinstance(messages[0][1], tuple):
            role, first = messages[0]
            text = first[0].replace("<image>", "").strip()
            if "mmtag" in self.version:
                messages[0] = (role, text)
                messages.insert(0, (self.roles[0], "<Image><image></Image>"))
                messages.insert(1, (self.roles[1], "Received."))
            else:
                messages[0] = (role, "<image>\n" + text)
        return messages

    def get_prompt(self) -> str:
        """Render the conversation into the prompt string of its template (docs/original.md#templates).

        A None/empty message is an open turn: only its role header is emitted, so the model continues
        from there. BOS is never part of the string; the tokenizer adds it.
        """
        messages = self._messages_for_prompt()
        style = self.sep_style
        if style == SeparatorStyle.SINGLE:
            out = self.system + self.sep
            for role, message in messages:
                out += f"{role}: {_message_text(message)}{self.sep}" if message else f"{role}:"
            return out
        if style == SeparatorStyle.TWO:
            seps = (self.sep, self.sep2)
            out = self.system + seps[0]
            for i, (role, message) in enumerate(messages):
                out += f"{role}: {_message_text(message)}{seps[i % 2]}" if message else f"{role}:"
            return out
        if style in (SeparatorStyle.MPT, SeparatorStyle.LLAMA_3):
            # LLaMA-3 uses the MPT algorithm with its own header strings.
            out = self.system + self.sep
            for role, message in messages:
                out += f"{role}{_message_text(message)}{self.sep}" if message else role
            return out
        if style == SeparatorStyle.LLAMA_2:
            return self._render_llama_2(messages)
        if style == SeparatorStyle.GEMMA:
            seps = (self.sep, self.sep2)
            out = self.system + seps[0]
            for i, (role, message) in enumerate(messages):
                if message:
                    out += f"<start_of_turn>{role}\n{_message_text(message)}<end_of_turn>\n{seps[i % 2]}"
                else:
                    out += f"<start_of_turn>{role}\n"
            return out
        if style == SeparatorStyle.PLAIN:
            # The original concatenates sep2=None here (TypeError) whenever an assistant message is
            # present; we fall back to `sep`, which is also how preprocess_plain ends the answer.
            seps = (self.sep, self.sep2 if self.sep2 is not None else self.sep)
            out = self.system
            for i, (_role, message) in enumerate(messages):
                if message:
                    out += _message_text(message) + seps[i % 2]
            return out
        raise ValueError(f"invalid separator style: {style!r}")

    def _render_llama_2(self, messages: list[tuple[str, Any]]) -> str:
        """LLaMA-2 / Mistral-instruct rendering: `[INST] ... [/INST]` pairs, system inside the first."""
        if not messages or not messages[0][1]:
            raise ValueError("LLAMA_2-style prompt: the first message must be a non-empty user message")
        if messages[0][0] != self.roles[0]:
            raise ValueError(
                f"LLAMA_2-style prompt: the first message must come from {self.roles[0]!r}, "
                f"got {messages[0][0]!r}"
            )
        out = ""
        for i, (_role, message) in enumerate(messages):
            if not message:
                continue
            text = _message_text(message)
            if i == 0 and self.system:
                text = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{text}"
            if i % 2 == 0:
                out += f"{self.sep}[INST] {text} [/INST]"
            else:
                out += f" {text} {self.sep2}"
        # Original quirk kept verbatim: lstrip takes a character SET ('<', 's', '>'), not a prefix.
        return out.lstrip(self.sep)

    # ------------------------------------------------------------------ editing
    def append_message(self, role: str, message: Any) -> None:
        """Add one turn (`message` None leaves the turn open for generation)."""
        self.messages.append([role, message])

    def insert_before_assistant(self, text: str) -> None:
        """Append `text` to the end of the LAST user message (e.g. OCR hints or " <GEN>").

        This is the correct place for every template (the original worker searched for
        `###Assistant:` and so misplaced the text for vicuna_v1 and gemma, docs/original.md#fixed-defects).
        Raises ValueError if the conversation has no user message.
        """
        for turn in reversed(self.messages):
            if turn[0] != self.roles[0]:
                continue
            message = turn[1]
            if isinstance(message, tuple):
                turn[1] = (message[0] + text,) + tuple(message[1:])
            else:
                turn[1] = (message or "") + text
            return
        raise ValueError(f"no {self.roles[0]!r} message to insert text into")

    # ------------------------------------------------------------------ stopping
    @property
    def stop_str(self) -> str | None:
        """The stop string of the original serving code: `sep` for SINGLE/MPT/LLAMA_3, else `sep2`.

        PLAIN has no sep2; we return its `sep` ("\\n") rather than None (the original then crashed).
        """
        if self.sep_style in (SeparatorStyle.SINGLE, SeparatorStyle.MPT, SeparatorStyle.LLAMA_3):
            return self.sep
        return self.sep2 if self.sep2 is not None else self.sep

    def stop_strings(self) -> list[str]:
        """Stop strings for generation (a list so callers can extend it; empty strings dropped)."""
        stop = self.stop_str
        return [stop] if stop else []

    # ------------------------------------------------------------------ images / UI
    @staticmethod
    def process_image(image, image_process_mode: str, return_pil: bool = False,
                      image_format: str = "PNG", max_len: int = 1344, min_len: int = 672):
        """Client-side image preparation of the Gradio demo (see `mgm.image_ops.prepare_demo_image`)."""
        from mgm.image_ops import prepare_demo_image

        return prepare_demo_image(image, image_process_mode, return_pil, image_format, max_len, min_len)

    def get_images(self, return_pil: bool = False) -> list:
        """Images of the user turns (even positions from `offset`) that carry a `(text, image, mode)` tuple."""
        images = []
        for i, (_role, message) in enumerate(self.messages[self.offset:]):
            if i % 2 == 0 and isinstance(message, tuple) and len(message) == 3:
                _text, image, mode = message
                images.append(self.process_image(image, mode, return_pil=return_pil))
        return images

    def to_gradio_chatbot(self) -> list[list]:
        """The original `[user, assistant]` pair list, images inlined as `<img>` tags (Gradio 3 format)."""
        pairs: list[list] = []
        for i, (_role, message) in enumerate(self.messages[self.offset:]):
            if i % 2 == 0:
                if isinstance(message, tuple) and len(message) == 3:
                    text, image, _mode = message
                    b64 = self.process_image(image, "Default", return_pil=False, image_format="JPEG")
                    tag = f'<img src="data:image/jpeg;base64,{b64}" alt="user upload image" />'
                    message = tag + text.replace("<image>", "").strip()
                pairs.append([message, None])
            else:
                if isinstance(message, tuple) and len(message) == 2:
                    text, b64 = message
                    tag = f'<img src="data:image/jpeg;base64,{b64}" alt="user upload image" />'
                    message = text.strip() + tag
                if pairs:
                    pairs[-1][-1] = message
                else:  # an assistant turn first (offset mismatch): keep it visible rather than crash
                    pairs.append([None, message])
        return pairs

    def to_messages(self) -> list[dict[str, str]]:
        """Turns from `offset` as `{"role": "user"|"assistant", "content": text}` (Gradio-6 messages).

        Image tags are removed from user text; open (None) turns are left out.
        """
        out: list[dict[str, str]] = []
        for i, (_role, message) in enumerate(self.messages[self.offset:]):
            if message is None:
                continue
            text = _message_text(message)
            if i % 2 == 0:
                out.append({"role": "user", "content": text.replace("<image>", "").strip()})
            else:
                out.append({"role": "assistant", "content": text})
        return out

    # ------------------------------------------------------------------ copies
    def copy(self) -> "Conversation":
        """An independent copy (messages list copied; `skip_next` reset, as in the original)."""
        return Conversation(
            system=self.system,
            roles=self.roles,
            messages=[[role, message] for role, message in self.messages],
            offset=self.offset,
            sep_style=self.sep_style,
            sep=self.sep,
            sep2=self.sep2,
            version=self.version,
        )

    def dict(self) -> dict[str, Any]:
        """JSON-friendly summary (images dropped from tuple messages), as in the original."""
        if self.get_images():
            messages = [[role, _message_text(message)] for role, message in self.messages]
        else:
            messages = self.messages
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": messages,
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }


# ---------------------------------------------------------------------- the template table (exact strings)
S_USER = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
S_HUMAN = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
S_MMTAG = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)
S_VISION = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
S_LLAMA2 = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
    "while being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, "
    "dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive "
    "in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why "
    "instead of answering something not correct. If you don't know the answer to a question, please "
    "don't share false information."
)

# The seeded exchange of the FastChat/LLaVA `v0` template (offset 2 hides it from the UI).
_V0_QUESTION = "What are the key differences between renewable and non-renewable energy sources?"
_V0_ANSWER = (
    "Renewable energy sources are those that can be replenished naturally in a relatively "
    "short amount of time, such as solar, wind, hydro, geothermal, and biomass. "
    "Non-renewable energy sources, on the other hand, are finite and will eventually be "
    "depleted, such as coal, oil, and natural gas. Here are some key differences between "
    "renewable and non-renewable energy sources:\n"
    "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable "
    "energy sources are finite and will eventually run out.\n"
    "2. Environmental impact: Renewable energy sources have a much lower environmental impact "
    "than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, "
    "and other negative effects.\n"
    "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically "
    "have lower operational costs than non-renewable sources.\n"
    "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
    "locations than non-renewable sources.\n"
    "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
    "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
    "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
    "non-renewable sources are not, and their depletion can lead to economic and social instability.\n"
)

_LLAMA3_SYSTEM_HEADER = "<|start_header_id|>system<|end_header_id|>\n\n"
_LLAMA3_USER_HEADER = "<|start_header_id|>user<|end_header_id|>\n\n"


def _template(system: str, roles: tuple[str, str], style: SeparatorStyle, sep: str,
              sep2: str | None = None, version: str = "Unknown",
              messages: list | None = None, offset: int = 0) -> Conversation:
    return Conversation(system=system, roles=roles, messages=list(messages or []), offset=offset,
                        sep_style=style, sep=sep, sep2=sep2, version=version)


conv_vicuna_v0 = _template(
    S_HUMAN, ("Human", "Assistant"), SeparatorStyle.SINGLE, "###",
    messages=[["Human", _V0_QUESTION], ["Assistant", _V0_ANSWER]], offset=2,
)
conv_vicuna_v1 = _template(S_USER, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "</s>", "v1")
conv_llava_v1 = _template(S_HUMAN, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "</s>", "v1")
conv_vicuna_imgsp_v1 = _template(S_USER, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "</s>", "imgsp_v1")
conv_phi_2 = _template(S_USER, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "<|endoftext|>", "phi2")
conv_llava_v0 = _template(S_HUMAN, ("Human", "Assistant"), SeparatorStyle.SINGLE, "###")
conv_llava_v0_mmtag = _template(S_MMTAG, ("Human", "Assistant"), SeparatorStyle.SINGLE, "###",
                                version="v0_mmtag")
conv_llava_v1_mmtag = _template(S_MMTAG, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "</s>", "v1_mmtag")
conv_llava_plain = _template("", ("", ""), SeparatorStyle.PLAIN, "\n")
conv_llama_2 = _template(S_LLAMA2, ("USER", "ASSISTANT"), SeparatorStyle.LLAMA_2, "<s>", "</s>", "llama_v2")
conv_llava_llama_2 = _template(S_VISION, ("USER", "ASSISTANT"), SeparatorStyle.LLAMA_2, "<s>", "</s>",
                               "llama_v2")
conv_mistral_instruct = _template("", ("USER", "ASSISTANT"), SeparatorStyle.LLAMA_2, "<s>", "</s>", "llama_v2")
# [PARITY] the assistant turn carries a *system* header: MGM-8B(-HD) was trained and evaluated so.
conv_llama_3 = _template(
    _LLAMA3_SYSTEM_HEADER + S_VISION, (_LLAMA3_USER_HEADER, _LLAMA3_SYSTEM_HEADER),
    SeparatorStyle.LLAMA_3, "<|eot_id|>", version="llama_v3",
)
conv_mpt = _template(
    "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
    "The assistant gives helpful and honest answers.",
    ("<|im_start|>user\n", "<|im_start|>assistant\n"), SeparatorStyle.MPT, "<|im_end|>", version="mpt",
)
conv_chatml_direct = _template(
    "<|im_start|>system\nAnswer the questions.",
    ("<|im_start|>user\n", "<|im_start|>assistant\n"), SeparatorStyle.MPT, "<|im_end|>", version="mpt",
)
conv_gemma = _template("", ("user", "model"), SeparatorStyle.GEMMA, "", "<eos>", "gemma")

conv_templates: dict[str, Conversation] = {
    "default": conv_vicuna_v0,
    "v0": conv_vicuna_v0,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "phi_2": conv_phi_2,
    "gemma": conv_gemma,
    "llama_2": conv_llama_2,
    "llama_3": conv_llama_3,
    "imgsp_v1": conv_vicuna_imgsp_v1,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
    "llava_v0": conv_llava_v0,
    "v0_mmtag": conv_llava_v0_mmtag,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "mpt": conv_mpt,
}

# The original's fallback template. Read-only: take `.copy()` (or use get_template) before editing.
default_conversation = conv_vicuna_v1


def get_template(name: str) -> Conversation:
    """A private, editable copy of the template `name`; UnknownTemplateError lists the valid names."""
    try:
        return conv_templates[name].copy()
    except KeyError:
        raise UnknownTemplateError(
            f"unknown conversation template {name!r}; valid names: {', '.join(sorted(conv_templates))}"
        ) from None


# Template choice from a model config lives in mgm.template_choice; these are the names callers import.
from mgm.template_choice import resolve_template, template_for_model_config  # noqa: E402,F401
