"""The generated Jinja chat templates render byte-identically to `mgm.conversation` for every template."""
from __future__ import annotations

import pytest

from mgm.conversation import SeparatorStyle, conv_templates, get_template
from mgm.processing.chat_templates import HF_DEFAULT

TEMPLATE_NAMES = sorted(name for name in conv_templates if name != HF_DEFAULT)


def _image_text(text, n_images=1):
    return [{"type": "image"}] * n_images + [{"type": "text", "text": text}]


# (id, messages, add_generation_prompt). Content forms: plain string, parts with images, several text parts.
SCENARIOS = [
    ("image_q", [{"role": "user", "content": _image_text("What is in the picture?")}], True),
    ("system_image_q", [{"role": "system", "content": "Answer in one word."},
                        {"role": "user", "content": _image_text("Color?")}], True),
    ("multi_turn", [{"role": "user", "content": _image_text("Describe it.")},
                    {"role": "assistant", "content": "A red square."},
                    {"role": "user", "content": "And its size?"}], True),
    ("system_multi_turn", [{"role": "system", "content": "Be brief."},
                           {"role": "system", "content": [{"type": "text", "text": "Use English."}]},
                           {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                           {"role": "user", "content": _image_text("Compare these.", n_images=2)}], True),
    ("two_images_text_parts", [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "First"},
                                                            {"type": "image"}, {"type": "text", "text": "second"}]}],
     True),
    ("tags_in_text", [{"role": "user", "content": [{"type": "image"},
                                                   {"type": "text", "text": "Look: <image>\nwhat?"}]}], True),
    ("closed_no_prompt", [{"role": "user", "content": _image_text("Q")},
                          {"role": "assistant", "content": "A"}], False),
    ("text_only_no_prompt", [{"role": "user", "content": "Just text"}], False),
]


def _text(content) -> tuple[str, int]:
    if isinstance(content, str):
        return content, 0
    texts = [p["text"] for p in content if p["type"] == "text"]
    return "\n".join(texts), sum(p["type"] == "image" for p in content)


def expected_prompt(name: str, messages: list[dict], add_generation_prompt: bool) -> str:
    """The prompt mgm's own code makes: Conversation + the OpenAI route's system rule + the profile's
    multi-image form (two or more images are numbered `Image k:<image>`)."""
    from mgm.profile import number_images
    from mgm.serve.openai_api import apply_system

    conv = get_template(name)
    system, turns = [], []
    for message in messages:
        text, n_images = _text(message["content"])
        if n_images and "<image>" not in text:
            text = "<image>\n" * n_images + text
        if message["role"] == "system":
            system.append(text)
        else:
            turns.append(text)
    if system:
        leftover = apply_system(conv, "\n".join(system))
        if leftover:
            turns[0] = leftover + "\n\n" + turns[0]
    for i, text in enumerate(turns):
        conv.append_message(conv.roles[i % 2], text)
    if add_generation_prompt:
        conv.append_message(conv.roles[1], None)
    return number_images(conv.get_prompt())


@pytest.fixture(scope="module")
def processor(tiny_zoo):
    from mgm.processing import MGMProcessor

    import mgm.model  # noqa: F401

    return MGMProcessor.from_pretrained(tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna"]["path"])


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s[0] for s in SCENARIOS])
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_template_renders_like_conversation(processor, name, scenario):
    _, messages, add_generation_prompt = scenario
    got = processor.apply_chat_template(messages, chat_template=name, add_generation_prompt=add_generation_prompt)
    assert got == expected_prompt(name, messages, add_generation_prompt)


def test_every_template_has_a_jinja_file_and_default_is_the_models(processor, tmp_path):
    from transformers import AutoProcessor

    templates = processor.chat_template
    assert set(templates) == set(TEMPLATE_NAMES) | {HF_DEFAULT}
    assert templates[HF_DEFAULT] == templates["vicuna_v1"]  # a Vicuna checkpoint's template
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == templates["vicuna_v1"]
    assert {f.stem for f in (tmp_path / "additional_chat_templates").iterdir()} == set(TEMPLATE_NAMES)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert reloaded.chat_template == templates
    messages = SCENARIOS[1][1]
    assert (reloaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == expected_prompt("vicuna_v1", messages, True))


@pytest.mark.parametrize("messages", [
    [{"role": "assistant", "content": "first"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
], ids=["assistant_first", "two_users"])
def test_non_alternating_roles_are_refused(processor, messages):
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="alternate"):
        processor.apply_chat_template(messages, chat_template="vicuna_v1", add_generation_prompt=True)


def test_system_without_user_slot_needs_a_user_message(processor):
    from jinja2.exceptions import TemplateError

    assert get_template("gemma").sep_style == SeparatorStyle.GEMMA
    with pytest.raises(TemplateError, match="user message"):
        processor.apply_chat_template([{"role": "system", "content": "x"}], chat_template="gemma")


def test_continue_final_message(processor):
    messages = [{"role": "user", "content": _image_text("Q")}, {"role": "assistant", "content": "The answer is"}]
    got = processor.apply_chat_template(messages, chat_template="chatml_direct", continue_final_message=True)
    assert got == expected_prompt("chatml_direct", messages, False)[: -len("<|im_end|>")]
