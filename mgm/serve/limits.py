"""The work one request may ask of a model worker, checked before anything is queued.

A request that looks valid can still be expensive: thousands of stop strings (matched on every
generated token, in the thread that serves every row), many images, or a few small files that decode
to gigabytes of pixels. `RequestLimits` bounds each of these; `check_stops` / `check_image_count` /
`check_pixels` raise a `RequestError` (400) or `ImageTooLargeError` (413) naming the field and the flag
that sets the limit.

Images are read in two steps so that memory follows the worker's concurrency slots, not the number
of requests waiting: `probe_image` reads only the file's header (the size is known, no pixel is
decoded) before the request queues, and `PendingImage.decode` runs once the request holds a slot.
The decoded images of a worker thus stay under about `slots x max_request_pixels x 7` bytes (RGB
plus the source during the conversion).
"""
from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from PIL import Image

from mgm.serve.protocol import ImageInputError, ImageTooLargeError, RequestError
from mgm.serve.security import ImagePolicy, decode_image_bytes

DEFAULT_MAX_STOP_STRINGS = 16  # OpenAI's API takes 4; templates add one or two of their own
DEFAULT_MAX_STOP_CHARS = 256
DEFAULT_MAX_IMAGES = 8
DEFAULT_MAX_REQUEST_PIXELS = 4096 * 4096 * 2  # two 4096^2 images; about 235 MB while decoding (7 B/pixel)
HEADER_B64_CHARS = 256 * 1024  # base64 decoded to read an image header (192 KB of file: past any EXIF/ICC block)
FULL_PROBE_B64_CHARS = 4 * 1024 * 1024  # a file with no header in that prefix is probed whole up to 3 MB
DECODE_BYTES_PER_PIXEL = 7  # RGB (3) plus the source image (up to 4) while it is converted


@dataclass(frozen=True)
class RequestLimits:
    """Per-request bounds of a worker (flags --max-stop-strings, --max-stop-chars, --max-images,
    --max-request-pixels)."""

    max_stop_strings: int = DEFAULT_MAX_STOP_STRINGS
    max_stop_chars: int = DEFAULT_MAX_STOP_CHARS
    max_images: int = DEFAULT_MAX_IMAGES
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS

    def check(self) -> None:
        """ValueError naming the first bound that is not positive."""
        for name in ("max_stop_strings", "max_stop_chars", "max_images", "max_request_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def check_stops(stops: list[str], limits: RequestLimits, param: str = "stop") -> None:
    """RequestError (400) when the client's stop strings are too many or one is too long."""
    if len(stops) > limits.max_stop_strings:
        raise RequestError(f"`{param}` has {len(stops)} strings; this server takes at most "
                           f"{limits.max_stop_strings} (--max-stop-strings)", param=param)
    for index, stop in enumerate(stops):
        if len(stop) > limits.max_stop_chars:
            raise RequestError(f"`{param}`[{index}] is {len(stop)} characters; this server takes at most "
                               f"{limits.max_stop_chars} per stop string (--max-stop-chars)", param=param)


def check_image_count(count: int, limits: RequestLimits, param: str = "messages") -> None:
    """RequestError (400) when a request carries more images than `limits.max_images`."""
    if count > limits.max_images:
        raise RequestError(f"the request has {count} images; this server takes at most {limits.max_images} "
                           "per request (--max-images)", param=param)


def over_long_prompt(chars: int, limit: int) -> RequestError:
    """The original protocol's 400 for a prompt surely longer than the context (the prompt is not echoed:
    the original answered prompt + "Exceeds max token length", megabytes back for megabytes sent)."""
    return RequestError(f"the prompt holds {chars} characters, more than the model's context can take (at most "
                        f"{limit} characters); please start a new conversation", param="prompt")


@dataclass
class PendingImage:
    """An image file whose header was read (`size` known) and whose pixels are not decoded yet.

    `data` is the file, or its base64 text when only a prefix was decoded to read the header (the
    rest is decoded with the pixels, once the request holds a slot).
    """

    data: bytes | str
    size: tuple[int, int]
    what: str

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]

    def decode(self, policy: ImagePolicy, mode: str | None = "RGB") -> Image.Image:
        """The decoded image (ImageInputError when the data past the header is corrupt)."""
        data = self.data
        if isinstance(data, str):
            if data.startswith("data:"):
                data = data[data.index(",") + 1:]
            try:
                data = base64.b64decode(data)
            except (binascii.Error, ValueError) as exc:
                raise ImageInputError(f"{self.what}: invalid base64 ({exc})") from None
        return decode_image_bytes(data, policy, mode=mode, what=self.what)


def probe_image(data: bytes, policy: ImagePolicy, what: str = "image") -> PendingImage:
    """Read only the header of an image file: its size, checked against `policy` (no pixel decoded)."""
    if len(data) > policy.max_bytes:
        raise ImageTooLargeError(f"{what}: {len(data)} bytes is over the limit of {policy.max_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{what}: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageInputError(f"{what}: not a readable image file (not an image format PIL can read)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"{what}: not a readable image file ({exc})") from None
    if width * height > policy.max_pixels:
        raise ImageTooLargeError(
            f"{what}: {width}x{height} = {width * height} pixels is over the limit of {policy.max_pixels}")
    return PendingImage(data, (width, height), what)


def probe_base64_image(b64: str, policy: ImagePolicy, what: str = "image") -> PendingImage:
    """`probe_image` of a base64 string (an optional `data:...;base64,` prefix is accepted).

    Megabytes of base64 are never copied or scanned whole here: only a prefix is decoded (see below).
    """
    start = 0
    if b64.startswith("data:"):
        comma = b64.find(",", 0, 1024)
        if comma < 0 or ";base64" not in b64[:comma]:
            raise ImageInputError(f"{what}: only base64 data URLs are supported")
        start = comma + 1
    chars = len(b64) - start
    if chars * 3 // 4 > policy.max_bytes + 3:  # refused before decoding: 4 characters per 3 bytes
        raise ImageTooLargeError(f"{what}: about {chars * 3 // 4} bytes is over the limit of "
                                 f"{policy.max_bytes} bytes")
    if chars > HEADER_B64_CHARS:
        # the header is in the first bytes of a file: decode those only (the whole file, megabytes of
        # base64 holding the interpreter, is decoded after the slot); a small file whose header lies
        # further in is decoded whole, a large one is refused (no format puts its header that far in)
        prefix = b64[start:start + HEADER_B64_CHARS]
        if _has_whitespace(prefix):  # line-wrapped base64 (MIME style): whole groups of 4 only
            prefix = "".join(prefix.split())
            prefix = prefix[:len(prefix) // 4 * 4]
        try:
            header = probe_image(base64.b64decode(prefix), policy, what)
        except ImageTooLargeError:
            raise
        except (ImageInputError, binascii.Error, ValueError):
            header = None
        if header is not None:
            return PendingImage(b64, header.size, what)
        if chars > FULL_PROBE_B64_CHARS:
            raise ImageInputError(f"{what}: not a readable image file (no image header in its first "
                                  f"{HEADER_B64_CHARS * 3 // 4 // 1024} KB)")
    try:
        data = base64.b64decode(b64[start:])
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(f"{what}: invalid base64 ({exc})") from None
    return probe_image(data, policy, what)


def _has_whitespace(text: str) -> bool:
    return any(char in text for char in "\n\r \t")


def check_pixels(images: list[PendingImage], limits: RequestLimits) -> None:
    """ImageTooLargeError (413) when the images of one request hold more pixels than allowed together."""
    total = sum(image.pixels for image in images)
    if total > limits.max_request_pixels:
        raise ImageTooLargeError(f"the request's {len(images)} images hold {total} pixels together; this server "
                                 f"takes at most {limits.max_request_pixels} per request (--max-request-pixels)")


def decode_all(images: list[PendingImage], policy: ImagePolicy, mode: str | None = "RGB") -> list[Image.Image]:
    """Decode probed images (call it once the request holds a slot, off the event loop)."""
    return [image.decode(policy, mode) for image in images]
