"""Text decoded from sentencepiece Llama-family tokenizers equals what the original's slow tokenizer gave:
sentencepiece's own decoding, which keeps the valid bytes of an invalid UTF-8 byte run."""
from __future__ import annotations

import pickle
import random
import threading

import pytest
import torch


@pytest.fixture(scope="module")
def sp_folder(tmp_path_factory):
    """A sentencepiece (byte_fallback) tokenizer trained here, in the Vicuna on-disk layout."""
    from mgm.zoo.tokenizers import build_tokenizer

    return build_tokenizer("vicuna", tmp_path_factory.mktemp("sp"), seed=1)


@pytest.fixture(scope="module")
def sp(sp_folder):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(sp_folder / "tokenizer.model"))


def _tokenizer(folder, family="llama"):
    from mgm.model.sentencepiece_decode import load_tokenizer

    return load_tokenizer(folder, family)


def _bytes(sp, *values):
    return [sp.piece_to_id(f"<0x{v:02X}>") for v in values]


def test_invalid_byte_run_keeps_its_valid_bytes(sp_folder, sp):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(str(sp_folder))
    tok = _tokenizer(sp_folder)
    ids = plain("hello", add_special_tokens=False).input_ids + _bytes(sp, 0xEB, 0x14, 0xE3) + \
        plain("world", add_special_tokens=False).input_ids + [plain.eos_token_id]
    assert sp.decode(ids[:-1]).endswith("\ufffd\x14\ufffd world")
    assert "\ufffd\ufffd\ufffd" in plain.decode(ids, skip_special_tokens=True)  # what the fix is about
    assert tok.decode(ids, skip_special_tokens=True) == sp.decode(ids[:-1])
    assert tok.batch_decode([ids, ids[:3]], skip_special_tokens=True) == [sp.decode(ids[:-1]), sp.decode(ids[:3])]
    assert tok.decode(torch.tensor(ids), skip_special_tokens=True) == sp.decode(ids[:-1])
    assert tok.decode(ids).endswith("</s>")  # special tokens kept as text when not skipped
    # encoding is untouched
    assert tok("hello world").input_ids == plain("hello world").input_ids


def test_random_piece_and_byte_sequences_decode_as_sentencepiece(sp_folder, sp):
    tok = _tokenizer(sp_folder)
    normal = [i for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]
    byte = [i for i in normal if sp.is_byte(i)]
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.choice(byte if rng.random() < 0.5 else normal) for _ in range(rng.randint(1, 12))]
        assert tok.decode(ids, skip_special_tokens=True) == sp.decode(ids), [sp.id_to_piece(i) for i in ids]


def test_text_streamer_prints_the_same_text(sp_folder, sp, capsys):
    from transformers import TextStreamer

    tok = _tokenizer(sp_folder)
    ids = tok("a b", add_special_tokens=False).input_ids + _bytes(sp, 0xEB, 0x14, 0xE3, 0xE3, 0x81, 0x82) + \
        tok(" c d", add_special_tokens=False).input_ids
    streamer = TextStreamer(tok, skip_special_tokens=True)
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert capsys.readouterr().out == sp.decode(ids) + "\n"


def test_only_families_the_original_decoded_slowly(tiny_zoo, sp_folder):
    """Gemma and Mixtral were loaded fast by the original, folders without tokenizer.model have no sp model."""
    from mgm.model.sentencepiece_decode import SentencePieceDecodingTokenizer

    gemma = tiny_zoo["checkpoints"]["MGM-Tiny-Gemma"]["path"]
    assert not isinstance(_tokenizer(gemma, "gemma"), SentencePieceDecodingTokenizer)
    assert not isinstance(_tokenizer(tiny_zoo["checkpoints"]["MGM-Tiny-LLaMA3"]["path"]), SentencePieceDecodingTokenizer)
    assert type(_tokenizer(sp_folder, "mistral")) is SentencePieceDecodingTokenizer
    # a named class, not a patched instance: nothing is installed on the object
    assert "_decode" not in vars(_tokenizer(sp_folder, "mistral"))


def test_saved_and_reloaded_tokenizer_decodes_as_the_original(sp_folder, sp, tmp_path):
    """`type(tokenizer)` names the decoding; save + `AutoTokenizer` reload keeps the class and the text."""
    from transformers import AutoTokenizer

    import mgm

    mgm.register()
    tok = _tokenizer(sp_folder)
    ids = tok("hello", add_special_tokens=False).input_ids + _bytes(sp, 0xEB, 0x14, 0xE3) + \
        tok("world", add_special_tokens=False).input_ids
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert type(again) is type(tok) and type(tok).__name__ == "SentencePieceDecodingTokenizer"
    assert again.decode(ids) == tok.decode(ids) == sp.decode(ids)
    assert "\ufffd\x14\ufffd" in again.decode(ids)


def test_tokenizer_with_original_decoding_pickles(sp_folder, sp):
    tok = _tokenizer(sp_folder)
    ids = _bytes(sp, 0xEB, 0x14, 0xE3)
    again = pickle.loads(pickle.dumps(tok))
    assert again.decode(ids) == tok.decode(ids) == "\ufffd\x14\ufffd"


def test_loader_and_engine_stream_give_the_original_text(tiny_zoo):
    """Through load_pretrained_model and the engine's streaming decoder, on an HD checkpoint whose answer
    is steered onto the byte run <0xEB><0x14><0xE3> by generate's own sequence_bias."""
    from PIL import Image

    from mgm.conversation import conv_templates
    from mgm.model.builder import load_pretrained_model
    from mgm.serve.engine import GenerationParams, InferenceEngine, Request

    tok, model, proc, ctx = load_pretrained_model(tiny_zoo["checkpoints"]["MGM-Tiny-Vicuna-HD"]["path"], None,
                                                  "MGM-Tiny-Vicuna-HD", device="cpu")
    eb, x14, e3 = (tok.convert_tokens_to_ids(f"<0x{v:02X}>") for v in (0xEB, 0x14, 0xE3))
    model.generation_config.sequence_bias = [[[eb], 100.0], [[eb, x14], 200.0], [[eb, x14, e3], 300.0],
                                             [[eb, x14, e3, tok.eos_token_id], 400.0]]
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat is this?")
    conv.append_message(conv.roles[1], None)
    request = Request(conv.get_prompt(), [Image.new("RGB", (40, 30), (9, 99, 199))],
                      GenerationParams(0, max_new_tokens=8))
    engine = InferenceEngine(tok, model, proc, ctx)
    streamed = "".join(engine.stream(request, cancel=threading.Event()))
    assert streamed == "\ufffd\x14\ufffd"
    assert engine.generate([request]) == [streamed]
