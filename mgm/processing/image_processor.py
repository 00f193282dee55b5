"""`MGMImageProcessor`: mgm's image preprocessing behind the transformers image-processor interface.

The numerics are those of `mgm.data.image` (CLIP resize/crop/normalise at the HR size, LR views as a
bilinear downsample of the HR tensor, HD crops + global view); this class only carries the settings
(`preprocessor_config.json` / the `image_processor` entry of `processor_config.json`) and returns a
`BatchFeature` with the two model inputs:

- `images`: [N, 3, s, s] (base) or [N, g²(+1), 3, s, s] (HD), one entry per image;
- `images_aux`: [N, 3, S, S] (only with an HR tower).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import make_flat_list_of_images
from transformers.processing_utils import ImagesKwargs

from mgm.data.image import CLIP_MEAN, CLIP_STD, ImageProcessor, image_to_tensors
from mgm.errors import UserError


class MGMImagesKwargs(ImagesKwargs, total=False):
    """The MGM view settings on top of the CLIP ones (config keys of the same names)."""

    image_aspect_ratio: str | None
    image_size_aux: int | None
    image_grid: int
    image_global: bool


class MGMImageProcessor(BaseImageProcessor):
    """LR (+ HR) tensors of images, exactly as mgm's engine and training data feed the towers."""

    model_input_names = ["images", "images_aux"]
    valid_kwargs = MGMImagesKwargs

    def __init__(self, crop_size: dict | int | None = None, size: dict | int | None = None,
                 image_mean=CLIP_MEAN, image_std=CLIP_STD, resample: int = 3, rescale_factor: float = 1 / 255,
                 do_resize: bool = True, do_center_crop: bool = True, do_rescale: bool = True,
                 do_normalize: bool = True, do_convert_rgb: bool = True, image_aspect_ratio: str | None = None,
                 image_size_aux: int | None = None, image_grid: int = 1, image_global: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        crop_size = 336 if crop_size is None else crop_size
        self.crop_size = {"height": crop_size, "width": crop_size} if isinstance(crop_size, int) else dict(crop_size)
        size = {"shortest_edge": self.crop_size["height"]} if size is None else size
        self.size = {"shortest_edge": size} if isinstance(size, int) else dict(size)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.resample = int(resample)
        self.rescale_factor = rescale_factor
        self.do_resize, self.do_center_crop, self.do_rescale = do_resize, do_center_crop, do_rescale
        self.do_normalize, self.do_convert_rgb = do_normalize, do_convert_rgb
        self.image_aspect_ratio = image_aspect_ratio
        self.image_size_aux = image_size_aux
        self.image_grid = int(image_grid)
        self.image_global = bool(image_global)

    @classmethod
    def from_model_config(cls, config, checkpoint_dir: str | Path | None = None) -> "MGMImageProcessor":
        """Settings from an MGM config and its CLIP tower folder, as `load_pretrained_model` builds them.

        The tower folder is found as the model finds it (relative paths against the checkpoint folder
        too); its `preprocessor_config.json` gives the CLIP settings, else the CLIP defaults at the
        tower's image size (`build_image_processor`).
        """
        from mgm.model.settings import MGMSettings
        from mgm.model.vision.registry import clip_config_from, resolve_tower_path

        s = MGMSettings.from_config(config)
        if not s.vision_tower:
            raise UserError("this config has no mm_vision_tower: the model takes no images")
        tower_dir = resolve_tower_path(s.vision_tower, str(checkpoint_dir) if checkpoint_dir else None)
        if tower_dir is not None and (tower_dir / "preprocessor_config.json").is_file():
            clip = ImageProcessor.from_pretrained(tower_dir)
        else:
            tower_cfg = clip_config_from(tower_dir, s.vision_tower)
            clip = ImageProcessor.for_image_size(tower_cfg.image_size if tower_cfg is not None else 336)
        return cls(crop_size=clip.crop_size, size=clip.size, image_mean=clip.image_mean, image_std=clip.image_std,
                   resample=clip.resample, rescale_factor=clip.rescale_factor, do_resize=clip.do_resize,
                   do_center_crop=clip.do_center_crop, do_rescale=clip.do_rescale, do_normalize=clip.do_normalize,
                   do_convert_rgb=clip.do_convert_rgb, image_aspect_ratio=s.image_aspect_ratio,
                   image_size_aux=s.image_size_aux if s.has_aux else None, image_grid=s.image_grid,
                   image_global=s.image_global)

    def clip_processor(self) -> ImageProcessor:
        """mgm's CLIP preprocessing with these settings (`image_size_raw` = the tower's crop size)."""
        return ImageProcessor(crop_size=dict(self.crop_size), size=dict(self.size), image_mean=tuple(self.image_mean),
                              image_std=tuple(self.image_std), resample=self.resample,
                              rescale_factor=self.rescale_factor, do_resize=self.do_resize,
                              do_center_crop=self.do_center_crop, do_rescale=self.do_rescale,
                              do_normalize=self.do_normalize, do_convert_rgb=self.do_convert_rgb,
                              image_size_raw=dict(self.crop_size))

    def views(self, images: list) -> tuple[torch.Tensor, torch.Tensor | None]:
        """PIL images (None = the zero views of a text-only row) -> stacked (images, images_aux)."""
        clip = self.clip_processor()
        lrs, hrs = [], []
        for image in images:
            lr, hr = image_to_tensors(image, clip, aspect_ratio=self.image_aspect_ratio,
                                      image_size_aux=self.image_size_aux, grid=self.image_grid,
                                      global_view=self.image_global)
            lrs.append(lr)
            hrs.append(hr)
        return torch.stack(lrs), (torch.stack(hrs) if hrs and hrs[0] is not None else None)

    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """Images (PIL, URL or path; one or a list, nested lists flattened) -> `images` (+ `images_aux`)."""
        unknown = set(kwargs) - set(self.valid_kwargs.__annotations__)
        if unknown:
            raise TypeError(f"MGMImageProcessor got unexpected arguments {sorted(unknown)}")
        flat = make_flat_list_of_images(self.fetch_images(images)) if images is not None else []
        lr, hr = self.views([as_pil(im) for im in flat])
        data = {"images": lr}
        if hr is not None:
            data["images_aux"] = hr
        return BatchFeature(data, tensor_type=return_tensors)

    def __call__(self, images, *args, **kwargs) -> BatchFeature:
        return self.preprocess(images, *args, **kwargs)

    def to_dict(self) -> dict:
        out = {k: v for k, v in super().to_dict().items() if not k.startswith("_")}
        return json.loads(json.dumps(out))  # plain JSON types (tuples -> lists)


def as_pil(image):
    """PIL image from PIL / numpy HWC / torch CHW input (mgm's preprocessing works on PIL images)."""
    from PIL import Image

    if image is None or isinstance(image, Image.Image):
        return image
    import numpy as np

    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = (arr * 255).round().clip(0, 255).astype(np.uint8) if arr.max() <= 1.0 else arr.astype(np.uint8)
    return Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
