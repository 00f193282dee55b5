"""`--version chat_template`: a `Conversation` rendered by the LLM tokenizer's own Jinja chat template.

Training, the CLI and the loaders treat it like any entry of `conv_templates`: `append_message`,
`get_prompt` (an open assistant turn = `add_generation_prompt`), `stop_strings`, `copy`. Differences:
- it is built from a tokenizer (`from_tokenizer`), or from the Jinja text an MGM checkpoint recorded
  (config keys `conv_template: "chat_template"` and `conv_chat_template`), never guessed from names;
- the BOS text a template writes is dropped from the prompt when the tokenizer adds BOS itself (the
  prompt would otherwise start with two);
- templates render a conversation as a whole (Qwen3 writes an empty think block only into the last
  assistant turn), so the supervised spans are found by rendering the whole conversation with one
  sentinel per reply and locating them (`supervised_spans`), not by rendering prefixes;
- replies are rendered without thinking (`enable_thinking=False`, ignored by templates without it):
  MGM trains and answers directly, and training and inference must render the same header.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from mgm.conversation import Conversation, SeparatorStyle, _message_text, conv_templates, get_template
from mgm.errors import UserError

CHAT_TEMPLATE = "chat_template"
CONFIG_NAME_KEY = "conv_template"  # the template name a checkpoint was trained with
CONFIG_JINJA_KEY = "conv_chat_template"  # the Jinja text, for `chat_template`
TEMPLATE_KWARGS = {"enable_thinking": False}
_ROLES = ("user", "assistant")


def _sentinel(k: int) -> str:
    return f"\x00mgm-reply-{k}\x00"


@dataclasses.dataclass
class JinjaConversation(Conversation):
    """A conversation rendered with a Jinja chat template (see the module docstring)."""

    chat_template: str = ""
    special_tokens: dict = dataclasses.field(default_factory=dict)
    drop_prefix: str = ""  # the BOS text the tokenizer adds itself

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, jinja: str | None = None) -> "JinjaConversation":
        """From `tokenizer` (its chat template unless `jinja` is given); UserError when it has none."""
        jinja = jinja or getattr(tokenizer, "chat_template", None)
        if isinstance(jinja, dict):
            jinja = jinja.get("default")
        if not jinja:
            raise UserError(f"--version {CHAT_TEMPLATE} renders prompts with the tokenizer's chat template, but "
                            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has none; give the base LLM a "
                            f"tokenizer with a chat template or choose one of: {', '.join(sorted(conv_templates))}")
        special = {name: getattr(tokenizer, name, None) for name in
                   ("bos_token", "eos_token", "pad_token", "unk_token")}
        special = {k: str(v) for k, v in special.items() if v is not None}
        bos = special.get("bos_token", "")
        drop = bos if bos and _tokenizer_adds_bos(tokenizer) else ""
        return cls(system="", roles=_ROLES, messages=[], offset=0, sep_style=SeparatorStyle.MPT, sep="",
                   sep2=None, version=CHAT_TEMPLATE, chat_template=jinja, special_tokens=special,
                   drop_prefix=drop)

    # -- rendering ------------------------------------------------------------------------------
    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        kwargs = {**TEMPLATE_KWARGS, **self.special_tokens}
        try:
            rendered = render_jinja_template(conversations=[messages], chat_template=self.chat_template,
                                             add_generation_prompt=add_generation_prompt, **kwargs)[0][0]
        except Exception as exc:  # the template's own raise_exception, or a Jinja error
            raise UserError(f"the chat template failed to render the conversation: {exc}") from None
        if self.drop_prefix and rendered.startswith(self.drop_prefix):
            rendered = rendered[len(self.drop_prefix):]
        return rendered

    def _as_messages(self) -> tuple[list[dict], bool]:
        out: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        messages = self._messages_for_prompt()
        open_turn = bool(messages) and messages[-1][0] == self.roles[1] and not messages[-1][1]
        for role, message in messages[:-1] if open_turn else messages:
            out.append({"role": "user" if role == self.roles[0] else "assistant",
                        "content": _message_text(message) or ""})
        return out, open_turn

    def get_prompt(self) -> str:
        messages, open_turn = self._as_messages()
        return self.render(messages, add_generation_prompt=open_turn)

    def turn_footer(self) -> str:
        """What the template writes after an assistant reply (its end-of-turn text)."""
        sentinel = _sentinel(0)
        text = self.render([{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel}], False)
        return text.partition(sentinel)[2]

    @property
    def stop_str(self) -> str | None:
        footer = self.turn_footer().strip()
        return footer or self.special_tokens.get("eos_token")

    def supervised_spans(self, turns: Sequence[tuple[int, str]]) -> tuple[str, list[tuple[int, int]]]:
        """(prompt, [(start, end)] character spans of each non-empty reply plus its end-of-turn text).

        Replies are stripped first (templates trim them); `turns` are (0 user | 1 assistant, text).
        """
        turns = [(role, text.strip() if role == 1 else text) for role, text in turns]
        real = [{"role": _ROLES[role], "content": text} for role, text in turns]
        prompt = self.render(real, False)
        marked = [{"role": _ROLES[role], "content": _sentinel(k) if role == 1 and text else text}
                  for k, (role, text) in enumerate(turns)]
        rendered = self.render(marked, False)
        footer = self.turn_footer()
        out, spans, pos = [], [], 0
        for k, (role, text) in enumerate(turns):
            if role != 1 or not text:
                continue
            at = rendered.find(_sentinel(k), pos)
            if at < 0:
                raise RuntimeError(f"the chat template dropped assistant reply {k}: it cannot be supervised")
            out.append(rendered[pos:at])
            start = sum(map(len, out))
            out.append(text)
            pos = at + len(_sentinel(k))
            tail = rendered[pos:]
            end_text = footer if tail.startswith(footer) else footer.rstrip() if tail.startswith(footer.rstrip()) else ""
            spans.append((start, start + len(text) + len(end_text)))
        out.append(rendered[pos:])
        if "".join(out) != prompt:
            raise RuntimeError("the chat template renders replies differently from their text (it rewrites them); "
                               "their tokens cannot be located for supervision")
        return prompt, spans

    def copy(self) -> "JinjaConversation":
        return dataclasses.replace(self, messages=[[role, message] for role, message in self.messages],
                                   skip_next=False)


def _tokenizer_adds_bos(tokenizer: Any) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a").input_ids
    return bool(ids) and ids[0] == bos and tokenizer("a", add_special_tokens=False).input_ids[:1] != [bos]


def conversation_for(name: str, tokenizer: Any = None, config: Any = None) -> Conversation:
    """An editable conversation for template `name`: `chat_template` from the checkpoint's recorded Jinja
    (config) or the tokenizer's; any other name from `conv_templates`."""
    if name != CHAT_TEMPLATE:
        return get_template(name)
    jinja = config.get(CONFIG_JINJA_KEY) if isinstance(config, dict) else getattr(config, CONFIG_JINJA_KEY, None)
    if tokenizer is None and not jinja:
        raise UserError(f"template {CHAT_TEMPLATE!r} needs the model's tokenizer or its recorded chat template")
    if tokenizer is None:
        return JinjaConversation(system="", roles=_ROLES, messages=[], offset=0, sep_style=SeparatorStyle.MPT,
                                 sep="", version=CHAT_TEMPLATE, chat_template=jinja)
    return JinjaConversation.from_tokenizer(tokenizer, jinja)


def valid_template_names() -> list[str]:
    return sorted([*conv_templates, CHAT_TEMPLATE])


_PARTS_TO_TEXT = r"""{#- mgm: content parts -> text with one <image> tag per image part, as mgm's own templates -#}
{%- set mgm_ns = namespace(msgs=[]) -%}
{%- for message in messages -%}
  {%- if message['content'] is string or message['content'] is none -%}
    {%- set mgm_ns.msgs = mgm_ns.msgs + [message] -%}
  {%- else -%}
    {%- set mgm_parts = namespace(texts=[], images=0) -%}
    {%- for part in message['content'] -%}
      {%- if part['type'] == 'text' -%}{%- set mgm_parts.texts = mgm_parts.texts + [part['text']] -%}
      {%- elif part['type'] in ['image', 'image_url'] -%}{%- set mgm_parts.images = mgm_parts.images + 1 -%}
      {%- endif -%}
    {%- endfor -%}
    {%- set mgm_text = mgm_parts.texts | join('\n') -%}
    {%- if mgm_parts.images > 0 and '<image>' not in mgm_text -%}
      {%- set mgm_text = '<image>\n' * mgm_parts.images + mgm_text -%}
    {%- endif -%}
    {%- set mgm_ns.msgs = mgm_ns.msgs + [{'role': message['role'], 'content': mgm_text}] -%}
  {%- endif -%}
{%- endfor -%}
{%- set messages = mgm_ns.msgs -%}
{%- if enable_thinking is not defined -%}{%- set enable_thinking = false -%}{%- endif -%}
"""


def hf_chat_template(conv: JinjaConversation) -> str:
    """The Jinja template an HF processor renders messages with, giving `conv.get_prompt()`'s string:
    image parts become `<image>` tags, thinking is off unless asked, and the BOS text is left to the
    tokenizer when it adds BOS itself."""
    drop_bos = "{%- set bos_token = '' -%}\n" if conv.drop_prefix else ""
    return _PARTS_TO_TEXT + drop_bos + conv.chat_template
