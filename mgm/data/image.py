"""Image loading and preprocessing exactly as the original feeds both towers (docs/original.md#image-preprocessing).

One normalised high-res tensor is made with the CLIP processor settings at `image_size_aux` (resize
shortest edge with PIL bicubic, centre crop, rescale, normalise); the low-res tensor is a plain bilinear
downsample of it (no antialias); HD mode splits the low-res image into g×g crops in row-major order and
appends a global view last. No shared processor is mutated: sizes are arguments.
"""
from __future__ import annotations

import base64
import copy
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mgm.constants import MAX_IMAGE_PIXELS
from mgm.errors import UserError
from mgm.image_ops import expand2square  # noqa: F401 (re-export: the original mm_utils name)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_IMAGE_BYTES = 64 * 1024 * 1024


@dataclass
class ImageProcessor:
    """The CLIP image processor's PIL path (transformers' slow `CLIPImageProcessor` numerics).

    Keeps the original attribute names (`crop_size`, `size`, `image_mean`, `image_std`) so code written
    against the original processor keeps working; `image_size_raw` is the tower's own crop size.
    """

    crop_size: dict = field(default_factory=lambda: {"height": 336, "width": 336})
    size: dict = field(default_factory=lambda: {"shortest_edge": 336})
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD
    resample: int = 3
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True
    image_size_raw: dict | None = None

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ImageProcessor":
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            raise UserError(f"{path} not found: the CLIP tower folder needs its preprocessor_config.json")
        cfg = json.loads(path.read_text())
        if "crop_size" not in cfg and not cfg.get("do_center_crop"):
            return cls._square_from_config(cfg)
        crop = cfg.get("crop_size", 336)
        crop = {"height": crop, "width": crop} if isinstance(crop, int) else dict(crop)
        size = cfg.get("size", {"shortest_edge": 336})
        size = {"shortest_edge": size} if isinstance(size, int) else dict(size)
        fields = {k: cfg[k] for k in ("resample", "rescale_factor", "do_resize", "do_center_crop", "do_rescale",
                                       "do_normalize", "do_convert_rgb") if k in cfg}
        return cls(crop_size=crop, size=size, image_mean=tuple(cfg.get("image_mean", CLIP_MEAN)),
                   image_std=tuple(cfg.get("image_std", CLIP_STD)), **fields)

    @classmethod
    def _square_from_config(cls, cfg: dict, side: int | None = None) -> "ImageProcessor":
        """A SigLIP-style processor: resize straight to a square (no crop); SigLIP 2's NaFlex config
        names no size, the tower's native side is used (`side`, else 384 until `at_size`)."""
        size = cfg.get("size")
        if isinstance(size, dict) and "height" in size:
            side = size["height"]
        elif isinstance(size, int):
            side = size
        side = side or 384
        fields = {k: cfg[k] for k in ("resample", "rescale_factor", "do_resize", "do_rescale", "do_normalize",
                                       "do_convert_rgb") if k in cfg}
        return cls(crop_size={"height": side, "width": side}, size={"height": side, "width": side},
                   image_mean=tuple(cfg.get("image_mean", (0.5, 0.5, 0.5))),
                   image_std=tuple(cfg.get("image_std", (0.5, 0.5, 0.5))), do_center_crop=False, **fields)

    @classmethod
    def for_image_size(cls, image_size: int) -> "ImageProcessor":
        return cls(crop_size={"height": image_size, "width": image_size}, size={"shortest_edge": image_size})

    @property
    def background(self) -> tuple[int, int, int]:
        """Pad colour for `expand2square`: the mean in 0..255 ints, (122, 116, 104) for CLIP."""
        return tuple(int(m * 255) for m in self.image_mean)

    def at_size(self, side: int) -> "ImageProcessor":
        """A copy resizing/cropping to `side` (the original mutated the shared processor instead)."""
        other = copy.deepcopy(self)
        other.image_size_raw = other.image_size_raw or dict(self.crop_size)
        other.crop_size = {"height": side, "width": side}
        other.size = {"shortest_edge": side} if "shortest_edge" in self.size else {"height": side, "width": side}
        return other

    def preprocess_one(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> [3, crop_h, crop_w] float32."""
        if self.do_convert_rgb and image.mode != "RGB":
            image = image.convert("RGB")
        if self.do_resize and "shortest_edge" not in self.size:  # SigLIP: straight to height x width
            image = image.resize((self.size["width"], self.size["height"]), resample=Image.Resampling(self.resample),
                                 reducing_gap=None)
        elif self.do_resize:
            short = self.size.get("shortest_edge") or min(self.size.get("height", 336), self.size.get("width", 336))
            w, h = image.size
            lo, hi = (w, h) if w <= h else (h, w)
            new_lo, new_hi = short, int(short * hi / lo)
            new_w, new_h = (new_lo, new_hi) if w <= h else (new_hi, new_lo)
            image = image.resize((new_w, new_h), resample=Image.Resampling(self.resample), reducing_gap=None)
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if self.do_center_crop:
            arr = _center_crop(arr, self.crop_size["height"], self.crop_size["width"])
        x = arr.astype(np.float64) * self.rescale_factor if self.do_rescale else arr.astype(np.float64)
        x = x.astype(np.float32)
        if self.do_normalize:
            x = (x - np.array(self.image_mean, dtype=np.float32)) / np.array(self.image_std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def preprocess(self, images, return_tensors: str | None = "pt", **_) -> dict:
        images = images if isinstance(images, (list, tuple)) else [images]
        return {"pixel_values": torch.stack([self.preprocess_one(im) for im in images])}

    __call__ = preprocess


def _center_crop(arr: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """Centre crop [H, W, C]; pads with zeros where the image is smaller (transformers' rule)."""
    h, w = arr.shape[:2]
    if h < crop_h or w < crop_w:
        top_pad, left_pad = max(0, (crop_h - h) // 2), max(0, (crop_w - w) // 2)
        canvas = np.zeros((max(h, crop_h), max(w, crop_w), arr.shape[2]), dtype=arr.dtype)
        canvas[top_pad: top_pad + h, left_pad: left_pad + w] = arr
        arr, h, w = canvas, canvas.shape[0], canvas.shape[1]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return arr[top: top + crop_h, left: left + crop_w]


def open_image(source: str | Path | bytes, name: str | None = None, allow_remote: bool = False,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode an image; every failure is a UserError naming the file."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if isinstance(source, (str, Path)) and str(source).startswith(("http://", "https://")):
        if not allow_remote:
            raise UserError(f"image {label} is a remote URL; pass --allow-remote-images to fetch it")
        import requests

        try:
            resp = requests.get(str(source), timeout=30)
            resp.raise_for_status()
        except Exception as exc:  # network failures are user-facing here
            raise UserError(f"could not fetch image {label}: {exc}") from None
        source = resp.content
    if not isinstance(source, bytes):
        path = Path(source)
        if path.is_dir():
            raise UserError(f"image file {label} is a directory, not an image file")
        if not path.is_file():
            raise UserError(f"image file {label} does not exist")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise UserError(f"image file {label} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
        source = path.read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source))
            if image.width * image.height > max_pixels:
                raise UserError(f"image {label} is {image.width}x{image.height} pixels, over the limit of "
                                f"{max_pixels} pixels (decompression-bomb guard)")
            image.load()
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"image {label} is too large (decompression-bomb guard, limit {max_pixels} pixels)") from None
    except Exception as exc:
        # PIL names the BytesIO it was given ("<_io.BytesIO object at 0x...>"), not the source: say which
        detail = "not an image format PIL can read" if isinstance(exc, Image.UnidentifiedImageError) else \
            f"{type(exc).__name__}: {exc}"
        raise UserError(f"{label} is not a readable image ({detail})") from None
    return image


def load_image_from_base64(image: str) -> Image.Image:
    """PIL image from base64 bytes (mode unchanged, as the original)."""
    return Image.open(io.BytesIO(base64.b64decode(image)))


def image_to_tensors(image: Image.Image | None, processor: ImageProcessor, *, aspect_ratio: str | None,
                     image_size_aux: int | None, grid: int = 1, global_view: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One image -> (LR views, HR tensor) as every consumer of the original builds them (docs/original.md#image-preprocessing).

    LR: [3, s, s] (g = 1) or [g²(+1), 3, s, s] (HD, global view last). HR: [3, S, S] or None without
    an aux tower. `image=None` gives the zero tensors of a text-only sample (docs/original.md#image-preprocessing).
    """
    raw = processor.image_size_raw or processor.crop_size
    side = raw["height"]
    if image is None:
        hr = torch.zeros(3, image_size_aux, image_size_aux) if image_size_aux else None
        lr = torch.zeros(3, side * grid, side * grid)
    else:
        if aspect_ratio == "pad":
            image = expand2square(image.convert("RGB"), processor.background)
        if image_size_aux:
            hr = processor.at_size(image_size_aux).preprocess_one(image)
            lr = F.interpolate(hr[None], size=[side * grid, side * grid], mode="bilinear", align_corners=False)[0]
        else:
            hr = None
            lr = processor.at_size(side * grid).preprocess_one(image) if grid > 1 else processor.preprocess_one(image)
    if grid > 1:
        crops = lr.view(3, grid, side, grid, side).permute(1, 3, 0, 2, 4).reshape(grid * grid, 3, side, side)
        if global_view:
            glob = F.interpolate(lr[None], size=[side, side], mode="bilinear", align_corners=False)
            crops = torch.cat([crops, glob], dim=0)
        lr = crops
    return lr, hr


def images_to_batch(images: Iterable[Image.Image | None], processor: ImageProcessor, settings
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Several images -> stacked (images, images_aux) for `generate`/`forward` (one entry per image)."""
    lrs, hrs = [], []
    for image in images:
        lr, hr = image_to_tensors(image, processor, aspect_ratio=settings.image_aspect_ratio,
                                  image_size_aux=settings.image_size_aux if settings.has_aux else None,
                                  grid=settings.image_grid, global_view=settings.image_global)
        lrs.append(lr)
        hrs.append(hr)
    return torch.stack(lrs), (torch.stack(hrs) if hrs and hrs[0] is not None else None)


def process_images(images, image_processor, model_cfg):
    """PIL images -> pixel tensors; `image_aspect_ratio == 'pad'` pads to square with the mean colour first.

    Returns a stacked [N, 3, H, W] tensor when all shapes agree, else a list (as the original).
    """
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    if aspect == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        outs = [image_processor.preprocess(expand2square(im.convert("RGB"), background), return_tensors="pt")
                ["pixel_values"][0] for im in images]
    else:
        return image_processor(images, return_tensors="pt")["pixel_values"]
    if all(o.shape == outs[0].shape for o in outs):
        return torch.stack(outs, dim=0)
    return outs
