"""Training data: lazy JSON/JSONL access, sample encoding (images, text-only, several images), bad samples,
the collator and the modality-length grouped sampler."""
from __future__ import annotations

import json

import pytest
import torch
from test_train_support import make_dataset, tiny_zoo

from mgm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mgm.data.collator import BAD_SAMPLES_KEY, EMPTY_BATCH_KEY, DataCollatorForSupervisedDataset
from mgm.data.dataset import BadSample, BadSampleError, DataConfig, LazySupervisedDataset, SampleFile
from mgm.data.sampler import (
    LengthGroupedSampler,
    get_modality_length_grouped_indices,
    split_to_even_chunks,
)
from mgm.errors import UserError


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return tiny_zoo(tmp_path_factory)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n=12)


@pytest.fixture(scope="module")
def tokenizer(zoo):
    from transformers import AutoTokenizer

    from mgm.data.tokenizer_setup import setup_tokenizer_for_version

    tok = AutoTokenizer.from_pretrained(zoo["llms"]["vicuna"], model_max_length=256, padding_side="right")
    return setup_tokenizer_for_version(tok, "v1")[0]


@pytest.fixture(scope="module")
def config(zoo, data):
    from mgm.data.image import ImageProcessor

    processor = ImageProcessor.from_pretrained(zoo["towers"]["clip"])
    processor.image_size_raw = dict(processor.crop_size)
    return DataConfig(template_name="v1", model_max_length=256, image_folder=str(data), image_processor=processor,
                      image_aspect_ratio="pad", image_size_aux=64)


# -- SampleFile -------------------------------------------------------------------------------------


def test_json_and_jsonl_give_the_same_samples(data):
    as_json, as_jsonl = SampleFile(data / "stage2.json"), SampleFile(data / "stage2.jsonl")
    expected = json.loads((data / "stage2.json").read_text())
    assert as_json.kind == "json" and as_jsonl.kind == "jsonl"
    assert len(as_json) == len(as_jsonl) == len(expected)
    assert [as_json[i] for i in range(len(expected))] == expected == [as_jsonl[i] for i in range(len(expected))]


def test_json_list_scanner_handles_brackets_inside_strings(tmp_path):
    tricky = [{"id": 'a"]}[{', "conversations": [{"from": "human", "value": "x \\\" ] } { ["}]},
              {"id": "ü-ñ", "conversations": []}]
    file = tmp_path / "t.json"
    file.write_text("\ufeff  \n" + json.dumps(tricky, ensure_ascii=False, indent=2), encoding="utf-8")
    samples = SampleFile(file)
    assert [samples[0], samples[1]] == tricky


@pytest.mark.parametrize("text, message", [
    ('{"a": 1}\n{"b": [1, 2', None),  # JSONL: a broken line is only found when read
    ('[{"a": 1}, {"b": 2}', "not closed"),
    ('"just a string"', "expected a JSON list"),
    ('[{"a": 1}, "oops"]', "element 1"),
    ("", "is empty"),
])
def test_sample_file_reports_broken_files(tmp_path, text, message):
    file = tmp_path / "d.json"
    file.write_text(text)
    if message is None:
        samples = SampleFile(file)
        assert samples[0] == {"a": 1}
        with pytest.raises(ValueError, match="not valid JSON"):
            samples[1]
    else:
        with pytest.raises(UserError, match=message):
            SampleFile(file)


def test_missing_data_file_names_it(tmp_path):
    with pytest.raises(UserError, match="nope.json does not exist"):
        SampleFile(tmp_path / "nope.json")


# -- encoding ---------------------------------------------------------------------------------------


def test_image_text_only_and_two_image_samples(data, tokenizer, config):
    dataset = LazySupervisedDataset(data / "stage2.jsonl", tokenizer, config)
    samples = [json.loads(line) for line in (data / "stage2.jsonl").read_text().splitlines()]
    image_i = next(i for i, s in enumerate(samples) if isinstance(s.get("image"), str))
    text_i = next(i for i, s in enumerate(samples) if "image" not in s)
    pair_i = next(i for i, s in enumerate(samples) if isinstance(s.get("image"), list))

    item = dataset[image_i]
    assert item["images"].shape == (1, 3, 32, 32) and item["images_aux"].shape == (1, 3, 64, 64)
    assert int((item["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == 1
    assert item["index"] == image_i  # the sample asked for, never another one

    text = dataset[text_i]
    assert int((text["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == 0
    assert text["images"].shape == (1, 3, 32, 32) and not text["images"].any() and not text["images_aux"].any()

    pair = dataset[pair_i]
    assert int((pair["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == 2
    assert pair["images"].shape == (2, 3, 32, 32) and pair["images_aux"].shape == (2, 3, 64, 64)
    assert not torch.equal(pair["images"][0], pair["images"][1])

    labels = item["labels"][item["labels"] != IGNORE_INDEX]
    assert tokenizer.decode(labels).replace(" ", "").startswith(samples[image_i]["conversations"][1]["value"])


def test_lengths_and_modality_lengths(data, tokenizer, config):
    dataset = LazySupervisedDataset(data / "stage2.json", tokenizer, config)
    samples = json.loads((data / "stage2.json").read_text())
    words = [sum(len(t["value"].split()) for t in s["conversations"]) for s in samples]
    assert dataset.lengths == [w + (128 if "image" in s else 0) for w, s in zip(words, samples)]
    assert dataset.modality_lengths == [w if "image" in s else -w for w, s in zip(words, samples)]


def _write(tmp_path, samples):
    file = tmp_path / "bad.json"
    file.write_text(json.dumps(samples))
    return file


def test_missing_image_is_reported_with_id_and_path(tmp_path, data, tokenizer, config):
    sample = {"id": "broken-7", "image": "images/nowhere.png",
              "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok"}]}
    dataset = LazySupervisedDataset(_write(tmp_path, [sample]), tokenizer, config)
    bad = dataset[0]
    assert isinstance(bad, BadSample) and bad.kind == "image"
    assert "broken-7" in bad.message() and str(data / "images" / "nowhere.png") in bad.message()
    with pytest.raises(BadSampleError, match="broken-7.*nowhere.png does not exist"):
        dataset.encode(0)


def test_corrupt_image_and_empty_target(tmp_path, data, tokenizer, config):
    (tmp_path / "junk.png").write_bytes(b"not an image")
    samples = [
        {"id": "junk", "image": str(tmp_path / "junk.png"),
         "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok"}]},
        {"id": "silent", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}]},
        {"id": "shape", "conversations": "not a list"},
    ]
    dataset = LazySupervisedDataset(_write(tmp_path, samples), tokenizer, config)
    kinds = [dataset[i].kind for i in range(3)]
    assert kinds == ["image", "empty_target", "format"]
    assert "junk.png" in dataset[0].message()
    assert "silent" in dataset[1].message() and "no supervised token" in dataset[1].message()


# -- collator ---------------------------------------------------------------------------------------


def test_collator_pads_masks_and_concatenates_images_in_row_order(data, tokenizer, config):
    dataset = LazySupervisedDataset(data / "stage2.json", tokenizer, config)
    samples = json.loads((data / "stage2.json").read_text())
    pair_i = next(i for i, s in enumerate(samples) if isinstance(s.get("image"), list))
    items = [dataset[0], dataset[pair_i], dataset[1]]
    batch = DataCollatorForSupervisedDataset(tokenizer, model_max_length=256)(items)
    lengths = [len(x["input_ids"]) for x in items]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for r, x in enumerate(items):
        assert torch.equal(batch["input_ids"][r, : lengths[r]], x["input_ids"])
        assert (batch["labels"][r, lengths[r]:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][r, lengths[r]:] == tokenizer.pad_token_id).all()
    assert batch["images"].shape[0] == 1 + 2 + 1
    assert torch.equal(batch["images"][1:3], items[1]["images"])
    assert BAD_SAMPLES_KEY not in batch


def test_collator_truncates_to_model_max_length(data, tokenizer, config):
    dataset = LazySupervisedDataset(data / "stage2.json", tokenizer, config)
    batch = DataCollatorForSupervisedDataset(tokenizer, model_max_length=10)([dataset[0], dataset[1]])
    assert batch["input_ids"].shape[1] == 10 and batch["labels"].shape[1] == 10


def test_collator_passes_bad_samples_on_and_fills_an_all_bad_batch(tmp_path, tokenizer, config):
    sample = {"id": "gone", "image": "x.png",
              "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok"}]}
    dataset = LazySupervisedDataset(_write(tmp_path, [sample, sample]), tokenizer, config)
    batch = DataCollatorForSupervisedDataset(tokenizer, 256)([dataset[0], dataset[1]])
    assert batch[EMPTY_BATCH_KEY] is True
    assert [r["id"] for r in batch[BAD_SAMPLES_KEY]] == ["gone", "gone"]
    assert batch["input_ids"].shape == (1, 1) and (batch["labels"] == IGNORE_INDEX).all()
    assert batch["images"].shape == (1, 3, 32, 32)


# -- sampler ----------------------------------------------------------------------------------------


def test_split_to_even_chunks_balances_lengths():
    lengths = [10, 9, 8, 1, 1, 1]
    chunks = split_to_even_chunks([0, 1, 2, 3, 4, 5], lengths, 2)
    assert sorted(i for c in chunks for i in c) == list(range(6)) and all(len(c) == 3 for c in chunks)
    totals = [sum(lengths[i] for i in c) for c in chunks]
    assert max(totals) - min(totals) <= 8
    assert split_to_even_chunks([0, 1, 2], lengths, 2) == [[0, 2], [1]]  # not divisible: strided


def test_modality_grouped_megabatches_never_mix_modalities():
    gen = torch.Generator().manual_seed(3)
    lengths = [int(x) for x in torch.randint(1, 50, (103,), generator=gen)]
    lengths = [x if i % 3 else -x for i, x in enumerate(lengths)]  # every third sample text-only
    batch, world = 4, 2
    order = get_modality_length_grouped_indices(lengths, batch, world, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(lengths)))
    size = batch * world
    full = len(order) // size
    megabatches = [order[i * size:(i + 1) * size] for i in range(full)]
    mixed = [mb for mb in megabatches if len({lengths[i] > 0 for i in mb}) > 1]
    assert len(mixed) <= 1  # only the merged leftovers may mix
    for mb in megabatches:
        if mb not in mixed:  # within a megabatch, each rank's chunk is sorted longest first
            for chunk in (mb[:batch], mb[batch:]):
                assert len(chunk) == batch


def test_sampler_is_deterministic_per_epoch():
    lengths = [(i % 7) + 1 if i % 2 else -((i % 5) + 1) for i in range(40)]
    sampler = LengthGroupedSampler(4, 2, lengths, group_by_modality=True, seed=11)
    first = list(sampler)
    assert sorted(first) == list(range(40)) and list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first
