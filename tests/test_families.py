"""Adding an LLM family is one row of the family table plus its tiny zoo entry: a test family (Qwen2, which
MGM never shipped) is added that way, built, loaded and chatted with through the CLI; the training facts
(ZeRO-3 leaf modules) come from the table too."""
from __future__ import annotations

import io
import sys

import pytest
from PIL import Image


@pytest.fixture
def qwen2_family(monkeypatch, tiny_zoo, tmp_path):
    """A Qwen2 MGM family registered through the table, and its tiny checkpoint (path)."""
    transformers = pytest.importorskip("transformers")
    from mgm.model import families
    from mgm.zoo import llms
    from mgm.zoo.checkpoint import build_mgm_checkpoint

    row = families.Family("qwen2", transformers.Qwen2Config, transformers.Qwen2Model, transformers.Qwen2ForCausalLM,
                          "mgm_qwen2", "Qwen2", "mini_gemini_qwen2", "MGMQwen2Config",
                          default_template="chatml_direct")
    spec = llms.LLMSpec("qwen2", "Qwen2ForCausalLM", "qwen2", "yi", "qwen2", "Qwen2", "Qwen2", "chatml_direct", 2,
                        1000000.0, 1e-6, "4.40.0")
    monkeypatch.setattr(families, "FAMILIES", (*families.FAMILIES, row))
    monkeypatch.setitem(llms.LLM_SPECS, "qwen2", spec)
    families.family_classes.cache_clear()
    try:
        families.register_auto_classes()
        llm = llms.build_llm("qwen2", tmp_path / "LLM" / "qwen2", seed=0)
        entry = build_mgm_checkpoint(tmp_path / "MGM" / "MGM-Tiny-Qwen2", spec=spec, llm_dir=llm,
                                     clip_dir=tiny_zoo["towers"]["clip"], convnext_dir=tiny_zoo["towers"]["convnext"],
                                     seed=0, name="MGM-Tiny-Qwen2")
        yield entry["path"]
    finally:
        monkeypatch.undo()
        families.family_classes.cache_clear()  # the other rows keep their classes (built once per row)


def test_a_family_added_through_the_table_chats(qwen2_family, tmp_path, monkeypatch, capsys):
    from mgm.conversation import template_for_model_config
    from mgm.model.builder import load_pretrained_model
    from mgm.serve import cli

    # The row's default template decides (the vocabulary rules alone would say vicuna_v1 here).
    assert template_for_model_config({"model_type": "mgm_qwen2", "vocab_size": 1000}) == "chatml_direct"
    assert template_for_model_config({"model_type": "mgm", "vocab_size": 1000}) == "vicuna_v1"

    _, model, _, _ = load_pretrained_model(qwen2_family, None, "MGM-Tiny-Qwen2", device="cpu")
    assert type(model).__name__ == "MGMQwen2ForCausalLM" and model.config.model_type == "mgm_qwen2"
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (220, 20, 20)).save(image)
    monkeypatch.setattr(sys, "stdin", io.StringIO("What colour is it?\n"))
    rc = cli.main(["--model-path", qwen2_family, "--image-file", str(image), "--device", "cpu",
                   "--temperature", "0", "--max-new-tokens", "4", "--debug"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("'outputs':") == 1 and out.rstrip().endswith("exit...")
    assert "<|im_start|>user\\n<image>\\nWhat colour is it?<|im_end|>" in out  # the row's template: ChatML


def test_adding_a_row_keeps_the_other_families_classes(tiny_zoo):
    from mgm.model import families

    before = families.family_classes()["mgm"]
    families.family_classes.cache_clear()
    assert families.family_classes()["mgm"] is before


def test_zero3_leaf_modules_come_from_the_table():
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from mgm.model.families import family_for_llm, find_family_for_llm

    assert family_for_llm("mixtral").zero3_leaf_modules == (MixtralSparseMoeBlock,)
    assert family_for_llm("mgm_mixtral").zero3_leaf_modules == (MixtralSparseMoeBlock,)
    assert family_for_llm("llama").zero3_leaf_modules == () and find_family_for_llm("qwen3") is None
