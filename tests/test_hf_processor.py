"""`MGMProcessor` / `MGMImageProcessor` through the transformers Auto classes: same inputs as mgm's engine."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from mgm.constants import IMAGE_TOKEN_INDEX

import mgm.model  # noqa: F401  (registers the Auto classes)


def _images():
    return [Image.new("RGB", (50, 30), (200, 30, 30)), Image.new("RGB", (20, 41), (10, 160, 90)),
            Image.new("L", (33, 33), 128)]


@pytest.fixture(scope="module", params=["MGM-Tiny-Vicuna", "MGM-Tiny-Gemma-HD"])
def checkpoint(request, tiny_zoo, loaded_models):
    from transformers import AutoProcessor

    from mgm.serve.engine import InferenceEngine

    name = request.param
    path = tiny_zoo["checkpoints"][name]["path"]
    tokenizer, model, image_processor, context_len = loaded_models(name)
    engine = InferenceEngine(tokenizer, model, image_processor, context_len)
    return name, path, AutoProcessor.from_pretrained(path), engine


def test_auto_processor_is_mgm_processor_with_the_models_template(checkpoint, tiny_zoo):
    from mgm.processing import MGMImageProcessor, MGMProcessor

    name, _, processor, _ = checkpoint
    assert isinstance(processor, MGMProcessor)
    assert isinstance(processor.image_processor, MGMImageProcessor)
    conv_mode = tiny_zoo["checkpoints"][name]["conv_mode"]
    assert processor.chat_template["default"] == processor.chat_template[conv_mode]


def test_batch_with_several_images_per_prompt_matches_engine(checkpoint):
    from mgm.serve.engine import Request

    _, _, processor, engine = checkpoint
    im = _images()
    if 3 * engine.num_image_tokens() < engine.model.config.max_position_embeddings:
        prompts, first = ["Image 1:<image>\nImage 2:<image>\nCompare.", "No image here.", "<image>\nWhat?"], im[:2]
    else:  # HD: two images per prompt would not fit the tiny context
        prompts, first = ["<image>\nCompare.", "No image here.", "<image>\nWhat?"], im[:1]
    out = processor(text=prompts, images=[*first, im[2]], return_tensors="pt")
    nested = processor(text=prompts, images=[first, [], [im[2]]], return_tensors="pt")
    requests = [Request(prompts[0], first), Request(prompts[1]), Request(prompts[2], [im[2]])]
    batch_in = engine.batch_inputs(requests)
    ids, mask, images, images_aux = batch_in.ids, batch_in.mask, batch_in.images, batch_in.images_aux
    for batch in (out, nested):
        assert set(batch) == {"input_ids", "attention_mask", "images", "images_aux"}
        # the engine pads left; the processor pads on the tokenizer's side: compare the real tokens
        for row in range(3):
            assert batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist() == \
                ids[row][mask[row].bool()].tolist()
        assert (batch["input_ids"] == IMAGE_TOKEN_INDEX).sum().item() == len(first) + 1
        assert torch.equal(batch["images"], images.float())  # one block per image + the text-only row's zeros
        assert torch.equal(batch["images_aux"], images_aux.float())


def test_single_prompt_and_padding_side(checkpoint):
    from mgm.serve.engine import Request

    _, _, processor, engine = checkpoint
    image = _images()[0]
    one = processor(text="<image>\nDescribe.", images=image)
    ids = engine.encode_prompt(Request("<image>\nDescribe.", [image]))
    assert one["input_ids"] == [ids.tolist()]  # lists without return_tensors, as HF processors
    left = processor(text=["<image>\nA", "<image>\nA longer question"], images=[image, image],
                     return_tensors="pt", padding_side="left")
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][0, -1] == 1


def test_image_count_mismatch_is_an_error(checkpoint):
    _, _, processor, _ = checkpoint
    with pytest.raises(ValueError, match="1 <image> tags but 2 images"):
        processor(text="<image>\nQ", images=_images()[:2])


def test_decode_drops_image_placeholders(checkpoint):
    _, _, processor, _ = checkpoint
    batch = processor(text="<image>\nHello there", images=_images()[0], return_tensors="pt")
    text = processor.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert "Hello there" in text
    assert processor.batch_decode(batch["input_ids"], skip_special_tokens=True) == [text]
    assert processor.post_process_image_text_to_text(batch["input_ids"]) == [text]


def test_auto_image_processor_from_saved_folder(checkpoint, tmp_path):
    from transformers import AutoImageProcessor, AutoProcessor

    from mgm.processing import MGMImageProcessor

    _, _, processor, engine = checkpoint
    processor.save_pretrained(tmp_path)
    image_processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(image_processor, MGMImageProcessor)
    images = _images()
    got = image_processor(images)
    lr, hr = engine.image_tensors(images)
    assert torch.equal(got["images"], lr.float()) and torch.equal(got["images_aux"], hr.float())
    again = AutoProcessor.from_pretrained(tmp_path)
    assert again.image_processor.to_dict() == processor.image_processor.to_dict()
