"""Torch-free PIL helpers shared by the preprocessing (`mgm.data.image`) and the web demo's client side."""
from __future__ import annotations

import base64
from io import BytesIO

from PIL import Image

PAD_COLOR = (122, 116, 104)  # the CLIP mean colour the original pads with


def expand2square(image: Image.Image, background_color=PAD_COLOR) -> Image.Image:
    """Pad to a square canvas of side max(w, h), the image centred along its short side."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background_color)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def prepare_demo_image(image: Image.Image, image_process_mode: str, return_pil: bool = False,
                       image_format: str = "PNG", max_len: int = 1344, min_len: int = 672):
    """The original Gradio demo's client-side image preparation (`Conversation.process_image`).

    Mode `Pad` pads to a square with (122, 116, 104); `Default`/`Crop` leave it; `Resize` makes it
    336x336. Then an image whose longer side exceeds `max_len` is downscaled keeping its aspect.
    Returns the PIL image or its base64-encoded bytes in `image_format`.
    """
    if image_process_mode == "Pad":
        image = expand2square(image)
    elif image_process_mode == "Resize":
        image = image.resize((336, 336))
    elif image_process_mode not in ("Default", "Crop"):
        raise ValueError(f"invalid image_process_mode {image_process_mode!r}; expected Pad, Default, Crop or Resize")
    if max(image.size) > max_len:
        long_side, short_side = max(image.size), min(image.size)
        aspect = long_side / short_side
        shortest = int(min(max_len / aspect, min_len, short_side))
        longest = int(shortest * aspect)
        width, height = image.size
        image = image.resize((shortest, longest) if height > width else (longest, shortest))
    if return_pil:
        return image
    buffer = BytesIO()
    image.save(buffer, format=image_format)
    return base64.b64encode(buffer.getvalue()).decode()
