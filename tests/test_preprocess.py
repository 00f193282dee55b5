"""Training-side tokenisation and label masking (docs/original.md#label-masking step 8, docs/original.md#fixed-defects/17).

The generic masking of `mgm.data.preprocess` is checked against a literal re-statement of the
original per-template token arithmetic (test-only reference below), on the tiny tokenizers of every
family, for single- and multi-turn samples, with and without images.
"""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer

from mgm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mgm.conversation import SeparatorStyle, UnknownTemplateError, conv_templates
from mgm.data.preprocess import (
    ConversationFormatError,
    EmptyTargetError,
    preprocess_multimodal,
    tokenize_conversation,
)
from mgm.data.tokenizer_setup import setup_tokenizer_for_version
from mgm.mm_utils import tokenizer_image_token
from mgm.zoo.tokenizers import build_tokenizer

# (tokenizer kind, --version) pairs as the released recipes combine them (+ a few cross pairs).
PAIRS = [
    ("vicuna", "vicuna_v1"),
    ("vicuna", "v1"),
    ("vicuna", "llava_v1"),
    ("vicuna", "llama_2"),
    ("mistral", "mistral_instruct"),
    ("mistral", "vicuna_v1"),  # a legacy SentencePiece tokenizer with v1
    ("llama3", "llama_3"),
    ("gemma", "gemma"),
    ("yi", "chatml_direct"),
    ("yi", "mpt"),
]
PLAIN_KINDS = ["vicuna", "mistral", "yi"]

# What each template writes after a reply, supervised together with it.
REPLY_SUFFIX = {
    SeparatorStyle.TWO: "</s>",
    SeparatorStyle.LLAMA_2: " </s>",
    SeparatorStyle.LLAMA_3: "<|eot_id|>",
    SeparatorStyle.GEMMA: "<end_of_turn>\n<eos>",
    SeparatorStyle.MPT: "<|im_end|>",
    SeparatorStyle.PLAIN: "\n",
}


def H(text):
    return {"from": "human", "value": text}


def G(text):
    return {"from": "gpt", "value": text}


SINGLE_TURN = [
    [H("<image>\nWhat color is the star?"), G("The star is yellow.")],
    [H("Describe the picture.\n<image>"), G("Two blue squares on a white background.")],
    [H("<image>\nHow many dots?"), G("42")],
    [H("<image>Is there a cat?"), G("No.")],
    [H("<image>\nRead the sign."), G("\"Stop\" (old) - red; cross: 3/4.")],
]
MULTI_TURN = [
    [H("What is in the image?\n<image>"), G("A red circle."), H("How many dots?"),
     G("There are 3 dots, 50% of them blue!"), H("Is there a cat?"), G("No.")],
    [H("<image>\nWhich shape is left of the tree?"), G("The small green triangle."),
     H("And its color?"), G("Green.\nIt is bright.")],
]


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {kind: build_tokenizer(kind, root / kind) for kind in ("vicuna", "mistral", "llama3", "gemma", "yi")}


@pytest.fixture(scope="session")
def tokenizers(tokenizer_dirs):
    """One tokenizer per (kind, version), set up as MGM training does (pad token rules)."""
    cache = {}

    def get(kind, version):
        if (kind, version) not in cache:
            tok = AutoTokenizer.from_pretrained(str(tokenizer_dirs[kind]))
            tok, template, _ = setup_tokenizer_for_version(tok, version)
            cache[kind, version] = (tok, template)
        return cache[kind, version]

    return get


def text_only(conversations):
    return [dict(turn, value=turn["value"].replace("<image>", "").strip()) for turn in conversations]


def prepare(conversations, has_image, template):
    return preprocess_multimodal(conversations, template_name=template) if has_image else text_only(conversations)


# ---------------------------------------------------------------------------------------------------
# Test-only reference: the ORIGINAL per-template arithmetic of docs/original.md#label-masking, restated literally.


def original_preprocess(source, tokenizer, template_name, has_image, tokenizers_ge_0_14=True):
    """Return (input_ids, labels) as the original computed them; labels None on its mismatch path."""
    conv = conv_templates[template_name].copy()
    source = copy.deepcopy(source)
    if conv.sep_style == SeparatorStyle.PLAIN:
        assert len(source) == 2 and "<image>" in source[0]["value"]
        source[0]["value"] = "<image>"
        prompt = source[0]["value"] + source[1]["value"] + conv.sep
        ids = tokenizer_image_token(prompt, tokenizer)
        labels = list(ids)
        n_masked = len(tokenizer_image_token(source[0]["value"], tokenizer))
        labels[:n_masked] = [IGNORE_INDEX] * n_masked
        return ids, labels

    roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
    if roles[source[0]["from"]] != conv.roles[0]:
        source = source[1:]
    conv.messages = []
    for j, sentence in enumerate(source):
        assert roles[sentence["from"]] == conv.roles[j % 2]
        conv.append_message(roles[sentence["from"]], sentence["value"])
    prompt = conv.get_prompt()

    def n_tokens(text):
        return len(tokenizer_image_token(text, tokenizer)) if has_image else len(tokenizer(text).input_ids)

    ids = tokenizer_image_token(prompt, tokenizer) if has_image else tokenizer(prompt).input_ids
    labels = list(ids)
    total_len = sum(1 for t in ids if t != tokenizer.pad_token_id)
    legacy = getattr(tokenizer, "legacy", False)

    def mask(lo, hi):
        for k in range(max(lo, 0), min(hi, len(labels))):
            labels[k] = IGNORE_INDEX

    style = conv.sep_style
    if style == SeparatorStyle.TWO:  # preprocess_v1
        sep = conv.sep + conv.roles[1] + ": "
        rounds = prompt.split(conv.sep2)
        cur = 1
    elif style == SeparatorStyle.LLAMA_2:
        sep = "[/INST] "
        rounds = prompt.split(conv.sep2)
        cur = 1
    elif style == SeparatorStyle.GEMMA:
        sep = "<start_of_turn>" + conv.sep + conv.roles[1] + "\n"
        rounds = prompt.split(conv.sep2)
        cur = 1
    elif style in (SeparatorStyle.LLAMA_3, SeparatorStyle.MPT):
        sep = conv.sep + conv.roles[1]
        pieces = prompt.split(conv.sep)
        rounds = [conv.sep.join(pieces[:3])]
        for c in range(3, len(pieces), 2):
            rounds.append(conv.sep.join(pieces[c:c + 2]))
        cur = 1 if style == SeparatorStyle.LLAMA_3 else 0
    else:
        raise AssertionError(f"no reference for {style}")
    mask(0, cur)
    for i, rou in enumerate(rounds):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        if style == SeparatorStyle.TWO:
            round_len, instr_len = n_tokens(rou), n_tokens(parts[0]) - 2
            if i != 0 and not legacy and tokenizers_ge_0_14:
                round_len -= 1
                instr_len -= 1
        elif style == SeparatorStyle.LLAMA_2:
            round_len, instr_len = n_tokens(rou), n_tokens(parts[0]) - 2
        elif style == SeparatorStyle.GEMMA:
            round_len, instr_len = n_tokens(rou), n_tokens(parts[0]) - 1
        elif style == SeparatorStyle.LLAMA_3:
            round_len = n_tokens(rou) - 1 + 1  # own BOS out, the split-off <|eot_id|> in
            instr_len = n_tokens(parts[0]) - 2 + 1
        else:  # MPT
            round_len, instr_len = n_tokens(rou), n_tokens(parts[0]) - 1
            if legacy and tokenizers_ge_0_14:
                round_len += 1
                instr_len += 1
        mask(cur, cur + instr_len)
        cur += round_len
    mask(cur, len(labels))
    if cur != total_len:  # "WARNING: tokenization mismatch" -> the original zeroed the sample
        return ids, None
    return ids, labels


# ---------------------------------------------------------------------------------------------------
# parity with the original arithmetic


@pytest.mark.parametrize("kind,version", PAIRS)
def test_labels_match_original_arithmetic(tokenizers, kind, version):
    tok, template = tokenizers(kind, version)
    compared = 0
    mismatch_path = []
    for sample_set in (SINGLE_TURN, MULTI_TURN):
        for sample in sample_set:
            for has_image in (True, False):
                conversations = prepare(sample, has_image, template)
                ids, labels, prompt = tokenize_conversation(conversations, tok, template, has_image)
                ref_ids, ref_labels = original_preprocess(conversations, tok, template, has_image)
                assert ids.tolist() == list(ref_ids), prompt
                assert (ids == IMAGE_TOKEN_INDEX).sum().item() == (1 if has_image else 0)
                if ref_labels is None:
                    mismatch_path.append(len(sample))
                    continue
                assert labels.tolist() == ref_labels, (kind, version, has_image, prompt)
                compared += 1
    # Every single-turn sample is compared for every pair; multi-turn ones too, except v1 on the
    # non-legacy Vicuna tokenizer, where the original's "-1 when not legacy" adjustment assumes
    # Llama-2's vocabulary ("▁USER" two pieces, "USER" one) and so hits its own mismatch path here.
    assert compared >= 2 * len(SINGLE_TURN)
    if not (kind == "vicuna" and conv_templates[template].sep_style == SeparatorStyle.TWO):
        assert mismatch_path == []
    else:
        assert all(n > 2 for n in mismatch_path)


@pytest.mark.parametrize("kind", PLAIN_KINDS)
def test_plain_matches_original(tokenizers, kind):
    tok, template = tokenizers(kind, "plain")
    assert template == "plain"
    for sample in SINGLE_TURN:
        conversations = preprocess_multimodal(sample, template_name="plain")
        ids, labels, prompt = tokenize_conversation(conversations, tok, "plain", has_image=True)
        ref_ids, ref_labels = original_preprocess(conversations, tok, "plain", True)
        assert prompt == "<image>" + sample[1]["value"] + "\n"
        assert ids.tolist() == list(ref_ids)
        assert labels.tolist() == ref_labels
        n_masked = 2 if tok(":").input_ids[0] == tok.bos_token_id else 1  # BOS (if the family adds it) + -200
        assert (labels[:n_masked] == IGNORE_INDEX).all() and labels[n_masked] != IGNORE_INDEX


# ---------------------------------------------------------------------------------------------------
# the supervised tokens are exactly the replies (+ the template's end-of-turn text)


def supervised_runs(ids, labels):
    runs, current = [], []
    for token, label in zip(ids.tolist(), labels.tolist()):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


@pytest.mark.parametrize("kind,version", PAIRS + [(k, "plain") for k in PLAIN_KINDS])
def test_supervised_tokens_decode_to_replies(tokenizers, kind, version):
    tok, template = tokenizers(kind, version)
    suffix = REPLY_SUFFIX[conv_templates[template].sep_style]
    samples = SINGLE_TURN if template == "plain" else SINGLE_TURN + MULTI_TURN
    for sample in samples:
        for has_image in ((True,) if template == "plain" else (True, False)):
            conversations = prepare(sample, has_image, template)
            ids, labels, _ = tokenize_conversation(conversations, tok, template, has_image)
            replies = [turn["value"] for turn in conversations if turn["from"] == "gpt"]
            runs = supervised_runs(ids, labels)
            assert len(runs) == len(replies)
            for run, reply in zip(runs, replies):
                decoded = tok.decode(run, skip_special_tokens=False)
                # SentencePiece decoding may keep the space that precedes the reply's first word.
                assert decoded.lstrip(" ") == reply + suffix, (kind, version)


# ---------------------------------------------------------------------------------------------------
# preprocess_multimodal


def test_preprocess_multimodal_single_image_matches_original_rule():
    sample = [H("  What is it? <image> "), G("A dog.")]
    out = preprocess_multimodal(sample)
    assert out == [H("<image>\nWhat is it?"), G("A dog.")]
    assert sample[0]["value"] == "  What is it? <image> "  # input untouched
    assert preprocess_multimodal([H("<image>"), G("x")]) == [H("<image>"), G("x")]
    # tag in a later turn stays in that turn (original behaviour)
    later = preprocess_multimodal([H("hi"), G("hello"), H("look <image>"), G("ok")])
    assert later[0]["value"] == "hi" and later[2]["value"] == "<image>\nlook"


def test_preprocess_multimodal_several_images_keeps_one_tag_per_image():
    sample = [H("Compare <image> and <image>."), G("Both red."), H("More <image>?"), G("No.")]
    out = preprocess_multimodal(sample, num_images=3)
    assert out[0]["value"] == "<image>\n<image>\n<image>\nCompare  and ."
    assert out[2]["value"] == "More ?"
    assert sum(turn["value"].count("<image>") for turn in out) == 3
    # one image but several tags: collapsed to one tag (the model gets one image's features)
    one = preprocess_multimodal(sample, num_images=1)
    assert sum(turn["value"].count("<image>") for turn in one) == 1


def test_preprocess_multimodal_untagged_sample_gets_tag_on_first_human_turn():
    out = preprocess_multimodal([G("greeting"), H("What is shown?"), G("A cat.")], num_images=2)
    assert out[1]["value"] == "<image>\n<image>\nWhat is shown?"
    with pytest.raises(ConversationFormatError):
        preprocess_multimodal([G("only gpt")])


def test_preprocess_multimodal_mmtag_and_im_start_end():
    sample = [H("<image>\nq"), G("a")]
    assert preprocess_multimodal(sample, template_name="v1_mmtag")[0]["value"] == "<Image><image></Image>\nq"
    assert preprocess_multimodal(sample, mm_use_im_start_end=True)[0]["value"] == "<im_start><image><im_end>\nq"
    assert preprocess_multimodal(sample, template_name="v0_mmtag", mm_use_im_start_end=True)[0]["value"] == \
        "<Image><im_start><image><im_end></Image>\nq"


def test_preprocess_multimodal_rejects_bad_input():
    with pytest.raises(ValueError, match="num_images"):
        preprocess_multimodal([H("<image>q"), G("a")], num_images=0)
    with pytest.raises(ConversationFormatError, match="turn 1"):
        preprocess_multimodal([H("<image>q"), {"from": "gpt", "value": None}])


def test_multi_image_sample_tokenises_one_image_token_per_image(tokenizers):
    tok, template = tokenizers("vicuna", "vicuna_v1")
    conversations = preprocess_multimodal([H("<image> vs <image>: same colour?"), G("Yes.")], num_images=2)
    ids, labels, prompt = tokenize_conversation(conversations, tok, template, has_image=True)
    assert prompt.count("<image>") == 2
    assert (ids == IMAGE_TOKEN_INDEX).sum().item() == 2
    assert (labels[ids == IMAGE_TOKEN_INDEX] == IGNORE_INDEX).all()
    assert tok.decode(supervised_runs(ids, labels)[0]) == "Yes.</s>"


# ---------------------------------------------------------------------------------------------------
# structure checks, errors, truncation


def test_leading_gpt_turn_is_dropped(tokenizers):
    tok, template = tokenizers("llama3", "llama_3")
    sample = [H("<image>\nq?"), G("a.")]
    base = tokenize_conversation(sample, tok, template, True)
    dropped = tokenize_conversation([G("system-ish preamble")] + sample, tok, template, True)
    assert torch.equal(base[0], dropped[0]) and torch.equal(base[1], dropped[1]) and base[2] == dropped[2]


@pytest.mark.parametrize("bad,match", [
    ([H("q"), H("q2"), G("a")], "alternate"),
    ([H("q"), {"from": "user", "value": "x"}], "'user'"),
    ([H("q"), {"from": "gpt", "value": 3}], "string 'value'"),
    ([G("only the model speaks")], "no turns"),
])
def test_malformed_conversations_raise(tokenizers, bad, match):
    tok, template = tokenizers("gemma", "gemma")
    with pytest.raises(ConversationFormatError, match=match):
        tokenize_conversation(bad, tok, template, has_image=False)


def test_plain_requires_image_pair(tokenizers):
    tok, _ = tokenizers("vicuna", "plain")
    with pytest.raises(ConversationFormatError, match="plain"):
        tokenize_conversation([H("no tag"), G("a")], tok, "plain", has_image=True)
    with pytest.raises(ConversationFormatError, match="plain"):
        tokenize_conversation([H("<image>"), G("a"), H("q"), G("b")], tok, "plain", has_image=True)


def test_unknown_template(tokenizers):
    tok, _ = tokenizers("vicuna", "vicuna_v1")
    with pytest.raises(UnknownTemplateError, match="vicuna_v1"):
        tokenize_conversation([H("q"), G("a")], tok, "vicuna-v1", has_image=False)


def test_empty_target_error(tokenizers):
    tok, template = tokenizers("yi", "chatml_direct")
    with pytest.raises(EmptyTargetError, match="no non-empty gpt reply") as info:
        tokenize_conversation([H("just a question")], tok, template, has_image=False)
    assert isinstance(info.value, ValueError)
    with pytest.raises(EmptyTargetError, match="no non-empty gpt reply"):
        tokenize_conversation([H("q"), G("")], tok, template, has_image=False)
    long_question = "Describe " + "the red circle and the blue square " * 30
    with pytest.raises(EmptyTargetError, match="max_length=16"):
        tokenize_conversation([H(long_question), G("ok")], tok, template, has_image=False, max_length=16)


def test_truncation_keeps_prefix(tokenizers):
    tok, template = tokenizers("mistral", "mistral_instruct")
    sample = preprocess_multimodal(MULTI_TURN[0])
    ids, labels, _ = tokenize_conversation(sample, tok, template, has_image=True)
    cut = int((labels != IGNORE_INDEX).nonzero()[0]) + 3  # keep 3 supervised tokens of reply 1
    t_ids, t_labels, _ = tokenize_conversation(sample, tok, template, has_image=True, max_length=cut)
    assert t_ids.dtype == torch.long and t_labels.dtype == torch.long
    assert t_ids.tolist() == ids[:cut].tolist() and t_labels.tolist() == labels[:cut].tolist()
    same = tokenize_conversation(sample, tok, template, has_image=True, max_length=len(ids))
    assert same[0].tolist() == ids.tolist()


def test_inputs_and_templates_are_not_mutated(tokenizers):
    tok, template = tokenizers("gemma", "gemma")
    sample = preprocess_multimodal(MULTI_TURN[1])
    before = copy.deepcopy(sample)
    tokenize_conversation(sample, tok, template, has_image=True)
    assert sample == before
    assert conv_templates["gemma"].messages == []


def test_seeded_v0_template_supervises_only_the_sample_reply(tokenizers):
    tok, _ = tokenizers("vicuna", "v1")
    ids, labels, prompt = tokenize_conversation([H("q?"), G("A cat.")], tok, "v0", has_image=False)
    assert "renewable" in prompt and prompt.endswith("###Human: q?###Assistant: A cat.###")
    runs = supervised_runs(ids, labels)
    assert [tok.decode(run).lstrip(" ") for run in runs] == ["A cat.###"]


# ---------------------------------------------------------------------------------------------------
# tokenizer set-up per --version (docs/original.md#training step 8)


@pytest.fixture
def fresh(tokenizer_dirs):
    return lambda kind: AutoTokenizer.from_pretrained(str(tokenizer_dirs[kind]))


def test_setup_v0_adds_pad(fresh):
    tok = fresh("vicuna")
    tok.padding_side = "left"
    n = len(tok)
    tok, template, added = setup_tokenizer_for_version(tok, "v0")
    assert (template, added, tok.pad_token, len(tok), tok.padding_side) == ("vicuna_v1", True, "[PAD]", n + 1, "right")
    tok, _, added = setup_tokenizer_for_version(tok, "v0")  # already has a pad: nothing added
    assert added is False and len(tok) == n + 1


def test_setup_v0_5_and_default_pad_with_unk(fresh):
    tok, template, added = setup_tokenizer_for_version(fresh("mistral"), "v0.5")
    assert (template, added, tok.pad_token, tok.pad_token_id) == ("vicuna_v1", False, "<unk>", tok.unk_token_id)
    for version, expected in [("v1", "v1"), ("plain", "plain"), ("mistral_instruct", "mistral_instruct"),
                              ("chatml_direct", "chatml_direct")]:
        tok, template, added = setup_tokenizer_for_version(fresh("yi"), version)
        assert (template, added, tok.pad_token) == (expected, False, "<unk>")
    with pytest.warns(UserWarning, match="not a conversation template"):
        _, template, _ = setup_tokenizer_for_version(fresh("vicuna"), "llama3_typo")
    assert template == "vicuna_v1"


def test_setup_gemma_keeps_pad(fresh):
    tok, template, added = setup_tokenizer_for_version(fresh("gemma"), "gemma")
    assert (template, added, tok.pad_token, tok.padding_side) == ("gemma", False, "<pad>", "right")
    _, template, _ = setup_tokenizer_for_version(fresh("gemma"), "gemma_v2")
    assert template == "gemma"


def test_setup_llama_3_uses_reserved_token(fresh):
    tok = fresh("llama3")
    assert tok.unk_token is None
    n = len(tok)
    tok, template, added = setup_tokenizer_for_version(tok, "llama_3")
    assert (template, added, len(tok)) == ("llama_3", False, n)
    assert tok.unk_token == tok.pad_token == "<|reserved_special_token_0|>"
    assert tok.pad_token_id == tok.convert_tokens_to_ids("<|reserved_special_token_0|>")
    _, template, _ = setup_tokenizer_for_version(fresh("llama3"), "llama_3_hd")
    assert template == "llama_3"


def test_setup_pad_with_unk_without_unk_or_pad_is_a_user_error(fresh):
    from mgm.errors import UserError

    tok = fresh("llama3")  # no unk, no pad
    with pytest.raises(UserError, match="neither an unk nor a pad"):
        setup_tokenizer_for_version(tok, "vicuna_v1")
