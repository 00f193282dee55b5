"""The call sequence of the original `mgm/serve/cli.py` and `mgm/eval/model_vqa_loader.py`, step by step
(written here from their description, not copied), runs on mgm for Llama, Llama-HD and Gemma checkpoints:
default `device="cuda"` falling back to CPU, the in-place `image_processor.crop_size/size` change with
`image_size_raw`, `process_images`, the bilinear LR view, the HD crop reshape and global view, fp16 images,
and `generate(images=, images_aux=, bos/eos/pad ids, streamer=TextStreamer)`."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

NAMES = ["MGM-Tiny-Vicuna", "MGM-Tiny-Vicuna-HD", "MGM-Tiny-Gemma"]


def original_disable_torch_init(monkeypatch):
    """The scripts' first call; torch's own init is put back after the test (it is process-wide)."""
    from mgm.utils import disable_torch_init

    for cls in (torch.nn.Linear, torch.nn.LayerNorm):
        monkeypatch.setattr(cls, "reset_parameters", cls.reset_parameters)
    disable_torch_init()


def load_as_original(path, name):
    """`load_pretrained_model(path, None, name, False, False)` with its default device="cuda"."""
    from mgm.model.builder import load_pretrained_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_pretrained_model(path, None, name, False, False)
    if not torch.cuda.is_available():
        assert any("CUDA is not available" in str(w.message) for w in caught)
        assert loaded[1].device.type == "cpu"
    return loaded


def original_image_tensors(images, image_processor, config, batched: bool):
    """LR and HR tensors as the original scripts build them (batched: cli.py; per item: model_vqa_loader)."""
    from mgm.mm_utils import process_images

    if hasattr(config, "image_size_aux"):
        if not hasattr(image_processor, "image_size_raw"):
            image_processor.image_size_raw = image_processor.crop_size.copy()
        image_processor.crop_size["height"] = config.image_size_aux
        image_processor.crop_size["width"] = config.image_size_aux
        image_processor.size["shortest_edge"] = config.image_size_aux
    image_tensor = process_images(images, image_processor, config)
    if not batched:
        image_tensor = image_tensor[0]
    raw_h, raw_w = image_processor.image_size_raw["height"], image_processor.image_size_raw["width"]
    grid = getattr(config, "image_grid", 1)
    if hasattr(config, "image_size_aux"):
        image_tensor_aux = image_tensor
        lr_in = image_tensor if batched else image_tensor[None]
        image_tensor = F.interpolate(lr_in, size=[raw_h * grid, raw_w * grid], mode="bilinear", align_corners=False)
        image_tensor = image_tensor if batched else image_tensor[0]
    else:
        image_tensor_aux = []
    if grid >= 2:
        crops = image_tensor.reshape(3, grid, raw_h, grid, raw_w).permute(1, 3, 0, 2, 4).reshape(-1, 3, raw_h, raw_w)
        if getattr(config, "image_global", False):
            whole = image_tensor if image_tensor.dim() == 4 else image_tensor[None]
            crops = torch.cat([crops, F.interpolate(whole, size=[raw_h, raw_w], mode="bilinear",
                                                    align_corners=False)], dim=0)
        image_tensor = crops.contiguous()
        if batched:
            image_tensor = image_tensor.unsqueeze(0)
    return image_tensor, image_tensor_aux


@pytest.fixture(scope="module")
def picture():
    import numpy as np

    return Image.fromarray((np.random.RandomState(3).rand(44, 60, 3) * 255).astype("uint8"))


@pytest.mark.parametrize("name", NAMES)
def test_cli_call_sequence(tiny_zoo, picture, name, capsys, monkeypatch):
    from transformers import TextStreamer

    from mgm.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from mgm.conversation import conv_templates
    from mgm.data.image import images_to_batch
    from mgm.mm_utils import tokenizer_image_token

    original_disable_torch_init(monkeypatch)
    tokenizer, model, image_processor, _ = load_as_original(tiny_zoo["checkpoints"][name]["path"], name)
    lr_ref, hr_ref = images_to_batch([picture], image_processor, model.mgm_settings)
    image_tensor, image_tensor_aux = original_image_tensors([picture], image_processor, model.config, batched=True)
    torch.testing.assert_close(image_tensor, lr_ref)
    torch.testing.assert_close(image_tensor_aux, hr_ref)
    image_tensor = image_tensor.to(model.device, dtype=torch.float16)
    image_tensor_aux = image_tensor_aux.to(model.device, dtype=torch.float16)

    conv = conv_templates["vicuna_v1"].copy()
    answers = []
    for turn, question in enumerate(["What is in the picture?", "And then?"]):
        conv.append_message(conv.roles[0], (DEFAULT_IMAGE_TOKEN + "\n" + question) if turn == 0 else question)
        conv.append_message(conv.roles[1], None)
        input_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX,
                                          return_tensors="pt").unsqueeze(0).to(model.device)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        capsys.readouterr()
        with torch.inference_mode():
            output_ids = model.generate(input_ids, images=image_tensor,
                                        images_aux=image_tensor_aux if len(image_tensor_aux) > 0 else None,
                                        do_sample=False, temperature=0, max_new_tokens=6,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id, streamer=streamer, use_cache=True)
        printed = capsys.readouterr().out
        outputs = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
        if name != "MGM-Tiny-Gemma":
            # sentencepiece decoding never rewrites text already streamed; the fast ByteFallback decoder
            # (Gemma, as in the original) may turn an already printed byte into U+FFFD later on
            assert printed.strip() == outputs
        assert printed.endswith("\n")
        conv.messages[-1][-1] = outputs
        answers.append(outputs)
    assert len(answers) == 2


@pytest.mark.parametrize("name", ["MGM-Tiny-Vicuna-HD", "MGM-Tiny-Gemma"])
def test_model_vqa_loader_call_sequence_writes_the_runners_answers(tiny_zoo, picture, name, tmp_path, monkeypatch):
    from torch.utils.data import DataLoader

    from mgm.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from mgm.conversation import conv_templates
    from mgm.eval import model_vqa_loader
    from mgm.mm_utils import tokenizer_image_token

    (tmp_path / "img").mkdir()
    questions = []
    for i, text in enumerate(["What is this?", "Describe it."]):
        picture.rotate(90 * i, expand=True).save(tmp_path / "img" / f"{i}.png")
        questions.append({"question_id": i, "image": f"{i}.png", "text": text})
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in questions))

    original_disable_torch_init(monkeypatch)
    tokenizer, model, image_processor, _ = load_as_original(tiny_zoo["checkpoints"][name]["path"], name)

    def item(line):
        conv = conv_templates["vicuna_v1"].copy()
        conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + line["text"])
        conv.append_message(conv.roles[1], None)
        image = Image.open(tmp_path / "img" / line["image"]).convert("RGB")
        lr, hr = original_image_tensors([image], image_processor, model.config, batched=False)
        return tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt"), lr, hr

    ours = []
    for input_ids, image_tensor, image_tensor_aux in DataLoader([item(q) for q in questions], batch_size=1):
        with torch.inference_mode():
            output_ids = model.generate(
                input_ids.to(model.device),
                images=image_tensor.to(dtype=model.dtype, device=model.device),
                images_aux=image_tensor_aux.to(dtype=model.dtype, device=model.device),
                do_sample=False, temperature=0, top_p=None, num_beams=1, max_new_tokens=10,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, use_cache=True)
        ours.append(tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip())

    answers = tmp_path / "answers.jsonl"
    model_vqa_loader.run(["--model-path", tiny_zoo["checkpoints"][name]["path"], "--image-folder", str(tmp_path / "img"),
                          "--question-file", str(qfile), "--answers-file", str(answers), "--temperature", "0",
                          "--conv-mode", "vicuna_v1", "--max_new_tokens", "10", "--device", "cpu"])
    runner = [json.loads(line)["text"] for line in answers.read_text().splitlines()]
    assert runner == ours
