"""Training samples from LLaVA conversation files, read lazily (docs/original.md#training).

A data file is a JSON list or a JSONL file of samples
`{"id": ..., "image": "rel/path.jpg" | ["a.jpg", "b.jpg"] (optional), "conversations": [{"from": "human" |
"gpt", "value": "..."}, ...]}`. Only the byte span of every sample is kept in memory (`SampleFile`): a
million-sample file costs 16 MB of offsets, and each sample is parsed when it is used, in whichever
DataLoader worker uses it.

`SampleEncoder` turns one sample into what the model sees: `<image>` tags placed (one per image),
the template rendered and tokenised with the label mask (`mgm.data.preprocess`), the images as LR/HR
tensors (`mgm.data.image.image_to_tensors`; zeros for a text-only sample in a multimodal run). It is shared
by training and `python -m mgm.data.inspect`.

Bad samples are never replaced by other samples (docs/original.md#fixed-defects). A missing or corrupt image, a malformed
conversation or a sample with no supervised token raises `BadSampleError` naming the sample id, its index,
the data file and the image path. In the training dataset `__getitem__` returns a `BadSample` record instead,
so that the decision — stop (default) or skip and count (`--skip_bad_samples True`) — is taken in the
training process with a clean message rather than inside a DataLoader worker.
"""
from __future__ import annotations

import json
import mmap
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mgm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mgm.errors import UserError
from mgm.profile import pad_id_for

# A whole JSON string token, or one bracket: enough to find the top-level elements of a JSON list.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_NON_SPACE = re.compile(rb"\S")
IMAGE_WORDS = 128  # length bonus of an image sample in the original `lengths`


# ---------------------------------------------------------------------------------------------------
# random access to the samples of a file


class SampleFile:
    """Samples of a JSON list or JSONL file, parsed on access from their byte spans."""

    def __init__(self, path: str | Path) -> None:
        self._fd: int | None = None
        self._pid: int | None = None
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"--data_path {self.path} does not exist")
        self.kind, spans = _index_file(self.path)
        self.spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.spans)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None  # every process opens its own handle
        return state

    def raw(self, index: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        start, end = self.spans[index]
        return os.pread(self._fd, int(end - start), int(start))

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The sample dict; ValueError (with the reason) when it is not a JSON object."""
        text = self.raw(index)
        try:
            sample = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(sample, dict):
            raise ValueError(f"a sample must be a JSON object, got {type(sample).__name__}")
        return sample

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass


def _index_file(path: Path) -> tuple[str, list[tuple[int, int]]]:
    """('json' | 'jsonl', [(start, end) byte span of every sample])."""
    if path.stat().st_size == 0:
        raise UserError(f"--data_path {path} is empty")
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        first = _NON_SPACE.search(buf)
        if first is None:
            raise UserError(f"--data_path {path} holds only whitespace")
        start = first.start()
        if buf[start:start + 3] == b"\xef\xbb\xbf":  # UTF-8 byte-order mark
            first = _NON_SPACE.search(buf, start + 3)
            start = first.start() if first else start
        lead = buf[start:start + 1]
        if lead == b"[":
            return "json", _scan_json_list(buf, path)
        if lead == b"{":
            return "jsonl", _scan_lines(buf)
    raise UserError(f"--data_path {path}: expected a JSON list of samples or JSONL (one object per line), "
                    f"but the file starts with {lead!r}")


def _scan_json_list(buf: mmap.mmap, path: Path) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    depth = 0
    start = 0
    for match in _JSON_TOKEN.finditer(buf):
        pos = match.start()
        char = buf[pos]
        if char == 0x22:  # a string
            if depth == 1:
                raise UserError(f"--data_path {path}: element {len(spans)} of the list is a string, not a sample "
                                "object")
            continue
        if char in (0x5B, 0x7B):  # [ {
            if depth == 1:
                if char != 0x7B:
                    raise UserError(f"--data_path {path}: element {len(spans)} of the list is a list, not a sample "
                                    "object")
                start = pos
            depth += 1
        else:
            depth -= 1
            if depth == 1:
                spans.append((start, match.end()))
            elif depth == 0:
                return spans
    raise UserError(f"--data_path {path}: the JSON list is not closed (truncated file?)")


def _scan_lines(buf: mmap.mmap) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    pos = 0
    size = len(buf)
    while pos < size:
        end = buf.find(b"\n", pos)
        end = size if end < 0 else end + 1
        if _NON_SPACE.search(buf, pos, end):
            spans.append((pos, end))
        pos = end
    return spans


# ---------------------------------------------------------------------------------------------------
# bad samples


@dataclass
class BadSample:
    """Why sample `index` cannot be trained on. `kind`: json, format, image, empty_target."""

    kind: str
    index: int
    sample_id: Any
    data_path: str
    reason: str
    image: str | None = None
    placeholder: dict | None = field(default=None, repr=False)

    def message(self) -> str:
        where = f"sample id={self.sample_id!r} (index {self.index} of {self.data_path})"
        return f"{where}: {self.reason}"

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "index": self.index, "id": _jsonable(self.sample_id), "data_path": self.data_path,
                "image": self.image, "reason": self.reason}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "BadSample":
        """The inverse of `to_record` (without the placeholder)."""
        return cls(record["kind"], record["index"], record["id"], record["data_path"], record["reason"],
                   record.get("image"))


class BadSampleError(UserError):
    """A sample that cannot be trained on; `.bad` has the details."""

    def __init__(self, bad: BadSample, hint: str = "") -> None:
        super().__init__(bad.message() + (f". {hint}" if hint else ""))
        self.bad = bad


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


# ---------------------------------------------------------------------------------------------------
# one sample -> model inputs


@dataclass
class DataConfig:
    """Everything the encoder needs besides the tokenizer.

    `image_processor` None and `multimodal` False: an LLM-only run (images ignored). `load_images` False
    (inspect with a bare tokenizer): `<image>` becomes -200 but no image file is read.
    """

    template_name: str
    model_max_length: int | None = None
    multimodal: bool = True
    image_folder: str | None = None
    image_processor: Any = None
    image_aspect_ratio: str | None = "square"
    image_size_aux: int | None = None
    image_grid: int = 1
    image_global: bool = False
    mm_use_im_start_end: bool = False
    load_images: bool = True

    @staticmethod
    def image_fields(settings: Any) -> dict[str, Any]:
        """image_size_aux / image_grid / image_global of a model's `MGMSettings` (None: an LLM-only model)."""
        if settings is None:
            return {"image_size_aux": None, "image_grid": 1, "image_global": False}
        return {"image_size_aux": settings.image_size_aux if settings.has_aux else None,
                "image_grid": settings.image_grid, "image_global": settings.image_global}


@dataclass
class EncodedSample:
    """One sample as the model sees it.

    input_ids, labels: [L] (IMAGE_TOKEN_INDEX where an image goes, IGNORE_INDEX where not supervised);
    images: [n, 3, s, s] or [n, g²(+1), 3, s, s]; images_aux: [n, 3, S, S] or None. n = number of images
    (1 zero entry for a text-only sample in a multimodal run).
    """

    index: int
    sample_id: Any
    prompt: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    images: torch.Tensor | None
    images_aux: torch.Tensor | None
    image_paths: list[str]


def resolve_image_path(folder: str | None, relative: str) -> Path:
    """`folder/relative`, with the original's fix-ups for the MGM data release when that file is missing:
    OCR-VQA images stored as .png under a .jpg name, Visual Genome `VG_100K(_2)` folders renamed `images`."""
    path = Path(folder) / relative if folder else Path(relative)
    if path.exists():
        return path
    text = str(path)
    candidates = []
    if "ocr" in text and ".jpg" in text:
        candidates.append(Path(text.replace(".jpg", ".png")))
    if "VG_100K" in text:
        candidates.append(Path(text.replace("VG_100K_2", "images").replace("VG_100K", "images")))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return path


class SampleEncoder:
    """Sample dict -> `EncodedSample` (raises `BadSampleError`)."""

    def __init__(self, tokenizer: Any, config: DataConfig, data_path: str = "<data>") -> None:
        from mgm.chat_template_conversation import conversation_for

        # unknown template (or a chat_template without a Jinja template): one UserError now, not one per sample
        conversation_for(config.template_name, tokenizer)
        self.tokenizer = tokenizer
        self.config = config
        self.data_path = data_path

    def _bad(self, kind: str, index: int, sample_id: Any, reason: str, image: str | None = None) -> BadSampleError:
        return BadSampleError(BadSample(kind, index, sample_id, self.data_path, reason, image))

    def image_paths(self, sample: dict, index: int) -> list[str]:
        value = sample.get("image")
        if value is None or value == "" or value == []:
            return []
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise self._bad("format", index, sample.get("id", index),
                            f"'image' must be a path or a list of paths, got {value!r:.120}")
        return values

    def encode(self, sample: dict, index: int) -> EncodedSample:
        from mgm.data.image import image_to_tensors, open_image
        from mgm.data.preprocess import (ConversationFormatError, EmptyTargetError, preprocess_multimodal,
                                         tokenize_conversation)

        cfg = self.config
        sample_id = sample.get("id", index)
        conversations = sample.get("conversations")
        if not isinstance(conversations, list) or not conversations:
            raise self._bad("format", index, sample_id, "'conversations' must be a non-empty list of turns")
        paths = self.image_paths(sample, index) if cfg.multimodal else []

        pil_images = []
        resolved: list[str] = []
        for rel in paths:
            file = resolve_image_path(cfg.image_folder, rel)
            resolved.append(str(file))
            if cfg.load_images:
                try:
                    pil_images.append(open_image(file))
                except UserError as exc:
                    raise self._bad("image", index, sample_id, str(exc), str(file)) from None
        try:
            if paths:
                conversations = preprocess_multimodal(conversations, len(paths), template_name=cfg.template_name,
                                                      mm_use_im_start_end=cfg.mm_use_im_start_end)
            input_ids, labels, prompt = tokenize_conversation(conversations, self.tokenizer, cfg.template_name,
                                                              has_image=bool(paths), max_length=cfg.model_max_length)
        except EmptyTargetError as exc:
            raise self._bad("empty_target", index, sample_id, str(exc), resolved[0] if resolved else None) from None
        except ConversationFormatError as exc:
            raise self._bad("format", index, sample_id, f"malformed conversation: {exc}") from None

        images = images_aux = None
        if cfg.multimodal and cfg.image_processor is not None and (pil_images or not paths):
            # A placeholder cut off by truncation drops its image: every remaining -200 keeps its own image.
            kept = int((input_ids == IMAGE_TOKEN_INDEX).sum())
            sources = pil_images[:kept] or [None]
            pairs = [image_to_tensors(im, cfg.image_processor, aspect_ratio=cfg.image_aspect_ratio,
                                      image_size_aux=cfg.image_size_aux, grid=cfg.image_grid,
                                      global_view=cfg.image_global) for im in sources]
            images = torch.stack([lr for lr, _ in pairs])
            images_aux = torch.stack([hr for _, hr in pairs]) if pairs[0][1] is not None else None
        return EncodedSample(index, sample_id, prompt, input_ids, labels, images, images_aux, resolved)


# ---------------------------------------------------------------------------------------------------
# the training dataset


class LazySupervisedDataset(Dataset):
    """Map-style dataset of `EncodedSample` dicts; bad samples come back as `BadSample` records."""

    def __init__(self, data_path: str | Path, tokenizer: Any, config: DataConfig) -> None:
        self.data_path = str(data_path)
        self.samples = SampleFile(data_path)
        if len(self.samples) == 0:
            raise UserError(f"--data_path {data_path} holds no samples")
        self.tokenizer = tokenizer
        self.config = config
        self.encoder = SampleEncoder(tokenizer, config, self.data_path)

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, index: int) -> dict:
        """The raw sample dict (BadSampleError for unreadable JSON)."""
        try:
            return self.samples[index]
        except ValueError as exc:
            raise BadSampleError(BadSample("json", index, index, self.data_path, str(exc))) from None

    def encode(self, index: int) -> EncodedSample:
        return self.encoder.encode(self.sample(index), index)

    @cached_property
    def _length_pairs(self) -> np.ndarray:
        """[N, 2]: (words, has_image) of every sample, from one pass over the file."""
        out = np.zeros((len(self.samples), 2), dtype=np.int64)
        for i in range(len(self.samples)):
            try:
                sample = self.samples[i]
                turns = sample.get("conversations") or []
                words = sum(len(str(t.get("value", "")).split()) for t in turns if isinstance(t, dict))
                has_image = bool(sample.get("image"))
            except (ValueError, AttributeError):
                words, has_image = 1, False  # reported when the sample is loaded
            out[i] = (words, has_image)
        return out

    @property
    def lengths(self) -> list[int]:
        """Whitespace words over all turns, + 128 for image samples (the original's `lengths`)."""
        pairs = self._length_pairs
        return (pairs[:, 0] + IMAGE_WORDS * pairs[:, 1]).tolist()

    @property
    def modality_lengths(self) -> list[int]:
        """Words (at least 1), positive for image samples and negative for text-only ones."""
        pairs = self._length_pairs
        words = np.maximum(pairs[:, 0], 1)
        return np.where(pairs[:, 1] > 0, words, -words).tolist()

    @cached_property
    def placeholder(self) -> dict:
        """Inputs of a row that trains nothing (one pad token, zero images): stands in for an all-bad batch."""
        from mgm.data.image import image_to_tensors

        pad = pad_id_for(self.tokenizer, ())  # the one pad rule (no EOS fallback: nothing is generated)
        out: dict = {"input_ids": torch.tensor([pad]), "labels": torch.tensor([IGNORE_INDEX])}
        cfg = self.config
        if cfg.multimodal and cfg.image_processor is not None:
            lr, hr = image_to_tensors(None, cfg.image_processor, aspect_ratio=cfg.image_aspect_ratio,
                                      image_size_aux=cfg.image_size_aux, grid=cfg.image_grid,
                                      global_view=cfg.image_global)
            out["images"] = lr[None]
            out["images_aux"] = hr[None] if hr is not None else None
        return out

    def __getitem__(self, index: int) -> dict | BadSample:
        try:
            encoded = self.encode(index)
        except BadSampleError as exc:
            bad = exc.bad
            bad.placeholder = self.placeholder
            return bad
        item: dict = {"input_ids": encoded.input_ids, "labels": encoded.labels, "index": index}
        if encoded.images is not None:
            item["images"] = encoded.images
            item["images_aux"] = encoded.images_aux
        return item
