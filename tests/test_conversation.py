"""Golden tests for the prompt templates (docs/original.md#templates): exact strings, editing helpers, defaults."""
from __future__ import annotations

import pytest
from PIL import Image

from mgm import constants
from mgm.conversation import (
    S_HUMAN,
    S_LLAMA2,
    S_MMTAG,
    S_USER,
    S_VISION,
    Conversation,
    SeparatorStyle,
    UnknownTemplateError,
    conv_templates,
    default_conversation,
    get_template,
    template_for_model_config,
)
from mgm.errors import UserError

Q = "What is shown here?"
LLAMA3_SYS = "<|start_header_id|>system<|end_header_id|>\n\n"
LLAMA3_USER = "<|start_header_id|>user<|end_header_id|>\n\n"


def render(name: str, *turns) -> str:
    conv = get_template(name)
    for i, text in enumerate(turns):
        conv.append_message(conv.roles[i % 2], text)
    return conv.get_prompt()


# ---------------------------------------------------------------------- constants and table
def test_constants_exact_values():
    assert constants.IGNORE_INDEX == -100
    assert constants.IMAGE_TOKEN_INDEX == -200
    assert constants.PREDICT_TOKEN_INDEX == -300
    assert constants.DEFAULT_IMAGE_TOKEN == "<image>"
    assert constants.DEFAULT_IMAGE_PATCH_TOKEN == "<im_patch>"
    assert constants.DEFAULT_IM_START_TOKEN == "<im_start>"
    assert constants.DEFAULT_IM_END_TOKEN == "<im_end>"
    assert constants.IMAGE_PLACEHOLDER == "<image-placeholder>"
    assert constants.DEFAULT_PREDICT_TOKEN == "<predict>"
    assert len(constants.DESCRIPT_PROMPT) == 10
    assert constants.CONTROLLER_HEART_BEAT_EXPIRATION == 30
    assert constants.WORKER_HEART_BEAT_INTERVAL == 15
    assert constants.LOGDIR == "."


def test_template_table_keys_and_fields():
    expected = {
        # key: (system, roles, style, sep, sep2, version)
        "default": (S_HUMAN, ("Human", "Assistant"), SeparatorStyle.SINGLE, "###", None, "Unknown"),
        "v0": (S_HUMAN, ("Human", "Assistant"), SeparatorStyle.SINGLE, "###", None, "Unknown"),
        "v1": (S_USER, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "</s>", "v1"),
        "vicuna_v1": (S_USER, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "</s>", "v1"),
        "llava_v1": (S_HUMAN, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "</s>", "v1"),
        "imgsp_v1": (S_USER, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "</s>", "imgsp_v1"),
        "phi_2": (S_USER, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "<|endoftext|>", "phi2"),
        "llava_v0": (S_HUMAN, ("Human", "Assistant"), SeparatorStyle.SINGLE, "###", None, "Unknown"),
        "v0_mmtag": (S_MMTAG, ("Human", "Assistant"), SeparatorStyle.SINGLE, "###", None, "v0_mmtag"),
        "v1_mmtag": (S_MMTAG, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "</s>", "v1_mmtag"),
        "plain": ("", ("", ""), SeparatorStyle.PLAIN, "\n", None, "Unknown"),
        "v0_plain": ("", ("", ""), SeparatorStyle.PLAIN, "\n", None, "Unknown"),
        "llama_2": (S_LLAMA2, ("USER", "ASSISTANT"), SeparatorStyle.LLAMA_2, "<s>", "</s>", "llama_v2"),
        "llava_llama_2": (S_VISION, ("USER", "ASSISTANT"), SeparatorStyle.LLAMA_2, "<s>", "</s>", "llama_v2"),
        "mistral_instruct": ("", ("USER", "ASSISTANT"), SeparatorStyle.LLAMA_2, "<s>", "</s>", "llama_v2"),
        "llama_3": (LLAMA3_SYS + S_VISION, (LLAMA3_USER, LLAMA3_SYS), SeparatorStyle.LLAMA_3,
                    "<|eot_id|>", None, "llama_v3"),
        "mpt": ("<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
                "The assistant gives helpful and honest answers.",
                ("<|im_start|>user\n", "<|im_start|>assistant\n"), SeparatorStyle.MPT, "<|im_end|>", None, "mpt"),
        "chatml_direct": ("<|im_start|>system\nAnswer the questions.",
                          ("<|im_start|>user\n", "<|im_start|>assistant\n"), SeparatorStyle.MPT,
                          "<|im_end|>", None, "mpt"),
        "mistral_direct": ("<|im_start|>system\nAnswer the questions.",
                           ("<|im_start|>user\n", "<|im_start|>assistant\n"), SeparatorStyle.MPT,
                           "<|im_end|>", None, "mpt"),
        "gemma": ("", ("user", "model"), SeparatorStyle.GEMMA, "", "<eos>", "gemma"),
    }
    assert set(conv_templates) == set(expected)
    for key, (system, roles, style, sep, sep2, version) in expected.items():
        conv = conv_templates[key]
        assert (conv.system, tuple(conv.roles), conv.sep_style, conv.sep, conv.sep2, conv.version) == (
            system, roles, style, sep, sep2, version), key
        assert conv.offset == (2 if key in ("default", "v0") else 0), key
        assert len(conv.messages) == (2 if key in ("default", "v0") else 0), key


def test_system_strings_exact():
    assert "The assistant gives helpful, detailed, and polite answers to the user's questions." in S_USER
    assert S_HUMAN.startswith("A chat between a curious human and")
    assert "natural language.The visual content will be provided with the following format: " \
           "<Image>visual content</Image>." in S_MMTAG
    assert "while being safe.  Your answers" in S_LLAMA2
    assert S_LLAMA2.endswith("please don't share false information.")
    assert "positive in nature.\n\nIf a question" in S_LLAMA2
    assert S_VISION == ("You are a helpful language and vision assistant. You are able to understand the "
                        "visual content that the user provides, and assist the user with a variety of "
                        "tasks using natural language.")


def test_default_conversation_is_vicuna_v1_and_never_mutated_by_get_template():
    assert default_conversation is conv_templates["vicuna_v1"]
    conv = get_template("vicuna_v1")
    conv.append_message("USER", "hi")
    conv.insert_before_assistant(" <GEN>")
    assert conv_templates["vicuna_v1"].messages == []
    v0 = get_template("v0")
    v0.append_message("Human", "x")
    assert len(conv_templates["v0"].messages) == 2


def test_get_template_unknown_name_lists_valid_keys():
    with pytest.raises(UnknownTemplateError) as info:
        get_template("vicuna_v9")
    message = str(info.value)
    assert "vicuna_v9" in message and "llama_3" in message and "chatml_direct" in message
    assert isinstance(info.value, UserError) and isinstance(info.value, KeyError)


# ---------------------------------------------------------------------- golden generation prompts (docs/original.md#templates)
IMG_Q = "<image>\n" + Q


def test_golden_vicuna_v1():
    assert render("vicuna_v1", IMG_Q, None) == S_USER + " USER: <image>\n" + Q + " ASSISTANT:"


def test_golden_mistral_instruct():
    assert render("mistral_instruct", IMG_Q, None) == "[INST] <image>\n" + Q + " [/INST]"


def test_golden_chatml_direct():
    assert render("chatml_direct", IMG_Q, None) == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\n" + Q
        + "<|im_end|><|im_start|>assistant\n")


def test_golden_llama_3():
    assert render("llama_3", IMG_Q, None) == (
        "<|start_header_id|>system<|end_header_id|>\n\n" + S_VISION
        + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\n" + Q
        + "<|eot_id|><|start_header_id|>system<|end_header_id|>\n\n")


def test_golden_gemma():
    assert render("gemma", IMG_Q, None) == (
        "<start_of_turn>user\n<image>\n" + Q + "<end_of_turn>\n<start_of_turn>model\n")


# ---------------------------------------------------------------------- multi-turn per style
def test_multi_turn_two():
    assert render("vicuna_v1", "q1", "a1", "q2", "a2", "q3", None) == (
        S_USER + " USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>USER: q3 ASSISTANT:")


def test_multi_turn_single_v0_seeded():
    conv = get_template("v0")
    conv.append_message("Human", "q1")
    conv.append_message("Assistant", None)
    prompt = conv.get_prompt()
    assert prompt.startswith(S_HUMAN + "###Human: What are the key differences between renewable and "
                             "non-renewable energy sources?###Assistant: Renewable energy sources are")
    assert "6. Sustainability: Renewable energy sources are more sustainable" in prompt
    assert prompt.endswith("economic and social instability.\n###Human: q1###Assistant:")


def test_multi_turn_single_llava_v0():
    assert render("llava_v0", "q1", "a1", "q2", None) == (
        S_HUMAN + "###Human: q1###Assistant: a1###Human: q2###Assistant:")


def test_multi_turn_mpt():
    assert render("mpt", "q1", "a1", "q2", None) == (
        "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. The assistant "
        "gives helpful and honest answers.<|im_end|><|im_start|>user\nq1<|im_end|><|im_start|>assistant\n"
        "a1<|im_end|><|im_start|>user\nq2<|im_end|><|im_start|>assistant\n")


def test_multi_turn_llama_3():
    assert render("llama_3", "q1", "a1", "q2", "a2") == (
        LLAMA3_SYS + S_VISION + "<|eot_id|>" + LLAMA3_USER + "q1<|eot_id|>" + LLAMA3_SYS + "a1<|eot_id|>"
        + LLAMA3_USER + "q2<|eot_id|>" + LLAMA3_SYS + "a2<|eot_id|>")


def test_multi_turn_gemma():
    assert render("gemma", "q1", "a1", "q2", None) == (
        "<start_of_turn>user\nq1<end_of_turn>\n<start_of_turn>model\na1<end_of_turn>\n<eos>"
        "<start_of_turn>user\nq2<end_of_turn>\n<start_of_turn>model\n")


def test_multi_turn_mistral_instruct():
    assert render("mistral_instruct", "q1", "a1", "q2", "a2", "q3", None) == (
        "[INST] q1 [/INST] a1 </s><s>[INST] q2 [/INST] a2 </s><s>[INST] q3 [/INST]")


def test_llama_2_with_system():
    assert render("llama_2", "q1", "a1", "q2", None) == (
        "[INST] <<SYS>>\n" + S_LLAMA2 + "\n<</SYS>>\n\nq1 [/INST] a1 </s><s>[INST] q2 [/INST]")
    assert render("llava_llama_2", "q1", None) == "[INST] <<SYS>>\n" + S_VISION + "\n<</SYS>>\n\nq1 [/INST]"


def test_llama_2_lstrip_is_a_character_set():
    # Original quirk: lstrip("<s>") strips leading '<', 's', '>' characters of the first message too.
    assert render("mistral_instruct", "q", None) == "[INST] q [/INST]"
    conv = get_template("mistral_instruct")
    conv.sep = "[I"  # artificial: shows it is a character set, not a prefix
    conv.append_message("USER", "q")
    assert conv.get_prompt() == "NST] q [/INST]"


def test_llama_2_rejects_bad_first_message():
    conv = get_template("llama_2")
    conv.append_message("ASSISTANT", "a")
    with pytest.raises(ValueError, match="first message"):
        conv.get_prompt()
    conv = get_template("llama_2")
    conv.append_message("USER", None)
    with pytest.raises(ValueError, match="non-empty"):
        conv.get_prompt()


def test_plain():
    assert render("plain", "<image>\n", None) == "<image>\n\n"
    assert render("plain", "<image>", None) == "<image>\n"
    # sep2 is None: we render assistant turns with sep instead of the original TypeError.
    assert render("plain", "<image>", "a caption") == "<image>\na caption\n"


def test_empty_message_is_an_open_turn():
    assert render("vicuna_v1", "q", "") == S_USER + " USER: q ASSISTANT:"
    assert render("chatml_direct", "q", "").endswith("<|im_start|>assistant\n")


# ---------------------------------------------------------------------- image tuples and mmtag
def _tiny_image(size=(8, 6), color=(200, 10, 10)):
    return Image.new("RGB", size, color)


def test_tuple_first_message_gets_image_prefix():
    conv = get_template("vicuna_v1")
    conv.append_message("USER", ("Describe <image> it", _tiny_image(), "Default"))
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt() == S_USER + " USER: <image>\nDescribe  it ASSISTANT:"
    # stored message untouched
    assert conv.messages[0][1][0] == "Describe <image> it"


def test_mmtag_tuple_inserts_two_turns():
    conv = get_template("v1_mmtag")
    conv.append_message("USER", ("<image>\nWhat is it?", _tiny_image(), "Pad"))
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt() == (
        S_MMTAG + " USER: <Image><image></Image> ASSISTANT: Received.</s>USER: What is it? ASSISTANT:")
    conv = get_template("v0_mmtag")
    conv.append_message("Human", ("What is it?<image>", _tiny_image(), "Pad"))
    conv.append_message("Assistant", None)
    assert conv.get_prompt() == (
        S_MMTAG + "###Human: <Image><image></Image>###Assistant: Received.###Human: What is it?###Assistant:")


def test_assistant_tuple_with_generated_image_renders_text():
    conv = get_template("chatml_direct")
    conv.append_message(conv.roles[0], "q")
    conv.append_message(conv.roles[1], ("here it is", "QUJD"))
    assert conv.get_prompt().endswith("<|im_start|>assistant\nhere it is<|im_end|>")
    chat = conv.to_gradio_chatbot()
    assert chat == [["q", 'here it is<img src="data:image/jpeg;base64,QUJD" alt="user upload image" />']]


def test_get_images_and_process_modes():
    conv = get_template("vicuna_v1")
    conv.append_message("USER", ("<image>\nq", _tiny_image((8, 4)), "Pad"))
    conv.append_message("ASSISTANT", "a")
    (img,) = conv.get_images(return_pil=True)
    assert img.size == (8, 8)
    assert img.getpixel((0, 0)) == (122, 116, 104)
    assert img.getpixel((0, 2)) == (200, 10, 10)
    (b64,) = conv.get_images()
    assert isinstance(b64, str) and len(b64) > 10
    big = Conversation.process_image(_tiny_image((3000, 1000)), "Default", return_pil=True)
    assert big.size == (1344, 448)  # shortest = int(min(1344/3, 672, 1000)) = 448, longest = 1344
    tall = Conversation.process_image(_tiny_image((1000, 3000)), "Default", return_pil=True)
    assert tall.size == (448, 1344)
    assert Conversation.process_image(_tiny_image(), "Resize", return_pil=True).size == (336, 336)
    with pytest.raises(ValueError, match="image_process_mode"):
        Conversation.process_image(_tiny_image(), "Stretch")


def test_to_gradio_chatbot_and_messages():
    conv = get_template("vicuna_v1")
    conv.append_message("USER", ("<image>\nq1", _tiny_image(), "Default"))
    conv.append_message("ASSISTANT", "a1")
    conv.append_message("USER", "q2")
    conv.append_message("ASSISTANT", None)
    pairs = conv.to_gradio_chatbot()
    assert len(pairs) == 2
    assert pairs[0][0].startswith('<img src="data:image/jpeg;base64,') and pairs[0][0].endswith("/>q1")
    assert pairs[0][1] == "a1" and pairs[1] == ["q2", None]
    assert conv.to_messages() == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    d = conv.dict()
    assert d["messages"][0] == ["USER", "<image>\nq1"] and d["sep2"] == "</s>"


def test_v0_messages_hidden_by_offset():
    conv = get_template("v0")
    conv.append_message("Human", "hello")
    conv.append_message("Assistant", "hi")
    assert conv.to_messages() == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]


def test_copy_is_independent():
    conv = get_template("gemma")
    conv.append_message("user", "q")
    clone = conv.copy()
    clone.append_message("model", "a")
    clone.messages[0][1] = "changed"
    assert conv.messages == [["user", "q"]]


# ---------------------------------------------------------------------- insert_before_assistant
@pytest.mark.parametrize("name", ["vicuna_v1", "gemma", "llama_3", "chatml_direct", "mistral_instruct", "v0"])
def test_insert_before_assistant_lands_at_end_of_last_user_message(name):
    conv = get_template(name)
    conv.append_message(conv.roles[0], "first")
    conv.append_message(conv.roles[1], "answer")
    conv.append_message(conv.roles[0], "Draw a cat")
    conv.append_message(conv.roles[1], None)
    conv.insert_before_assistant(" <GEN>")
    prompt = conv.get_prompt()
    expected_conv = get_template(name)
    expected_conv.append_message(conv.roles[0], "first")
    expected_conv.append_message(conv.roles[1], "answer")
    expected_conv.append_message(conv.roles[0], "Draw a cat <GEN>")
    expected_conv.append_message(conv.roles[1], None)
    assert prompt == expected_conv.get_prompt()
    assert prompt.count("<GEN>") == 1


def test_insert_before_assistant_tuple_and_error():
    conv = get_template("vicuna_v1")
    image = _tiny_image()
    conv.append_message("USER", ("<image>\nq", image, "Pad"))
    conv.append_message("ASSISTANT", None)
    conv.insert_before_assistant("\nReference OCR Token: HELLO")
    assert conv.messages[0][1][0] == "<image>\nq\nReference OCR Token: HELLO"
    assert conv.messages[0][1][1] is image and conv.messages[0][1][2] == "Pad"
    with pytest.raises(ValueError, match="USER"):
        get_template("vicuna_v1").insert_before_assistant("x")


# ---------------------------------------------------------------------- stop strings
@pytest.mark.parametrize("name,stop", [
    ("vicuna_v1", "</s>"), ("llava_v0", "###"), ("v0", "###"), ("chatml_direct", "<|im_end|>"),
    ("mpt", "<|im_end|>"), ("llama_3", "<|eot_id|>"), ("gemma", "<eos>"), ("mistral_instruct", "</s>"),
    ("llama_2", "</s>"), ("phi_2", "<|endoftext|>"), ("plain", "\n"),
])
def test_stop_strings(name, stop):
    conv = get_template(name)
    assert conv.stop_str == stop
    assert conv.stop_strings() == [stop]


# ---------------------------------------------------------------------- default template from config
class _Vocab:
    def __init__(self, *tokens):
        self._vocab = {t: i for i, t in enumerate(tokens)}

    def get_vocab(self):
        return dict(self._vocab)


@pytest.mark.parametrize("config,tokenizer,expected", [
    ({"model_type": "mgm_gemma", "vocab_size": 256000}, None, "gemma"),
    ({"model_type": "mini_gemini_gemma"}, None, "gemma"),
    ({"model_type": "mgm_mixtral", "vocab_size": 32000}, None, "mistral_instruct"),
    ({"model_type": "mgm_mistral"}, None, "mistral_instruct"),
    ({"model_type": "mini_gemini_mixtral"}, None, "mistral_instruct"),
    ({"model_type": "mini_gemini_mistral"}, None, "mistral_instruct"),
    ({"model_type": "mgm", "vocab_size": 128256, "bos_token_id": 128000}, None, "llama_3"),
    ({"model_type": "mgm", "vocab_size": 500, "bos_token_id": 128000}, None, "llama_3"),
    ({"model_type": "mini_gemini", "vocab_size": 500}, _Vocab("<s>", "<|eot_id|>"), "llama_3"),
    ({"model_type": "mgm", "vocab_size": 64000}, None, "chatml_direct"),
    ({"model_type": "mgm", "vocab_size": 500}, _Vocab("<|im_start|>", "<|im_end|>"), "chatml_direct"),
    ({"model_type": "mgm", "vocab_size": 64000}, _Vocab("<s>"), "vicuna_v1"),
    ({"model_type": "mgm", "vocab_size": 32000}, None, "vicuna_v1"),
    ({"model_type": "mini_gemini", "vocab_size": 32000}, _Vocab("<s>", "</s>"), "vicuna_v1"),
])
def test_template_for_model_config(config, tokenizer, expected):
    assert template_for_model_config(config, tokenizer) == expected


def test_template_for_model_config_accepts_transformers_config():
    from transformers import GemmaConfig, LlamaConfig

    assert template_for_model_config(GemmaConfig(vocab_size=300)) == "gemma"
    assert template_for_model_config(LlamaConfig(vocab_size=128256, bos_token_id=128000)) == "llama_3"
    assert template_for_model_config(LlamaConfig(vocab_size=32000)) == "vicuna_v1"
