"""The synthetic scenes of MGM-Tiny: vocabulary, random scene layout and the halftone renderer.

A scene is 1-3 large shapes of one kind and colour (coarse: readable at low resolution) with a texture,
a digit panel and a mark panel drawn in 2x2 halftone cells whose mean is the colour underneath (fine:
readable only at high resolution). `mgm.zoo.synth` builds the data sets from these scenes; its module
docstring explains why the low-res view cannot tell the fine details apart.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mgm.errors import UserError

# Every channel stays within [PATTERN_DELTA, 255 - PATTERN_DELTA] so a texture can add +-PATTERN_DELTA exactly.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (195, 60, 60), "green": (60, 160, 75), "blue": (60, 90, 195),
    "yellow": (195, 180, 60), "purple": (150, 70, 185),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COUNTS: tuple[int, ...] = (1, 2, 3)
PATTERNS: tuple[str, ...] = ("plain", "striped", "checkered")
DIGITS: tuple[str, ...] = tuple("0123456789")
MARKS: tuple[str, ...] = ("cross", "ring", "dot", "bar")
PATTERN_DELTA = 60

COARSE: tuple[str, ...] = ("colour", "shape", "count")
# How often stage 2 asks about each category: the ones a tiny LLM picks up slowly are asked more.
CATEGORY_WEIGHTS: dict[str, float] = {"colour": 0.6, "shape": 1.2, "count": 1.0, "pattern": 0.8, "digit": 1.6,
                                      "mark": 1.2}
FINE: tuple[str, ...] = ("pattern", "digit", "mark")
CATEGORIES: tuple[str, ...] = COARSE + FINE

# Halftone ink: dark and light greys whose mean is the panel grey, so a 2x2 checker cell averages to it.
PANEL_GREY, INK_DARK, INK_LIGHT = 128, 16, 240
BACKGROUND = (255, 255, 255)

# 5x7 cell bitmaps ("#" = ink) of the digits (a classic dot-matrix font) and 5x5 ones of the marks.
DIGIT_FONT: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}
MARK_FONT: dict[str, tuple[str, ...]] = {
    "cross": ("#...#", ".#.#.", "..#..", ".#.#.", "#...#"),
    "ring": ("#####", "#...#", "#...#", "#...#", "#####"),
    "dot": (".....", ".###.", ".###.", ".###.", "....."),
    "bar": (".....", ".....", "#####", "#####", "....."),
}


@dataclass(frozen=True)
class SynthOptions:
    """Sizes of the synthetic images; `image_size` should equal the model's `image_size_aux`."""

    image_size: int = 128
    lr_size: int = 32
    tokens_per_side: int = 8
    fine_jitter: bool = True

    @property
    def factor(self) -> int:
        return self.image_size // self.lr_size

    @property
    def window(self) -> int:
        """Pixels of the HR image under one LR token (side)."""
        return self.image_size // self.tokens_per_side

    @property
    def cell_offset(self) -> int:
        """Pixel parity of the halftone grid: the LR bilinear resize averages pixels f*i+f/2-1 and f*i+f/2."""
        return (self.factor // 2 - 1) % 2

    @property
    def panel(self) -> int:
        """Side of a fine-detail panel: whole LR-token windows, enough for 5x7 halftone cells."""
        windows = 1
        while (windows * self.window - self.cell_offset) // 2 < 7:
            windows += 1
        return windows * self.window

    def check(self) -> None:
        s, lr = self.image_size, self.lr_size
        if lr <= 0 or s % lr or (s // lr) % 2:
            raise UserError(f"--image-size {s} must be an even multiple of --lr-size {lr} (e.g. 64, 128, 256 for 32): "
                            "the halftone cells must align with the LR resize grid")
        if s % self.tokens_per_side:
            raise UserError(f"--image-size {s} must be a multiple of {self.tokens_per_side} (LR tokens per side)")
        if self.panel * 3 > s:
            raise UserError(f"--image-size {s} is too small for the fine-detail panels (need at least 3 x {self.panel})")


@dataclass(frozen=True)
class Scene:
    """Everything drawn in one image (positions in pixels of the `image_size` canvas)."""

    colour: str
    shape: str
    count: int
    boxes: tuple[tuple[int, int, int], ...]  # (x, y, size) of each large shape
    pattern: str
    digit: str
    digit_cell: tuple[int, int]  # top-left cell of the digit inside its panel
    mark: str
    mark_cell: tuple[int, int]

    def answer(self, category: str) -> str:
        """The single-word answer to the category's question."""
        return {"colour": self.colour, "shape": self.shape, "count": str(self.count), "pattern": self.pattern,
                "digit": self.digit, "mark": self.mark}[category]


def _choices(category: str) -> tuple[str, ...]:
    return {"colour": tuple(COLOURS), "shape": SHAPES, "count": tuple(str(c) for c in COUNTS),
            "pattern": PATTERNS, "digit": DIGITS, "mark": MARKS}[category]


def sample_scene(rng: random.Random, opts: SynthOptions) -> Scene:
    """Draw the random content of one image (no pixels yet)."""
    s, panel = opts.image_size, opts.panel
    colour, shape, count = rng.choice(tuple(COLOURS)), rng.choice(SHAPES), rng.choice(COUNTS)
    forbidden = [(0, 0, panel + 2, panel + 2), (s - panel - 2, s - panel - 2, s, s)]
    boxes: list[tuple[int, int, int]] = []
    size = s * 9 // 32  # 36 px at 128 (9 px in the 32 px LR view); one size, so area tells the count
    while len(boxes) < count:
        x, y = rng.randint(1, s - size - 1), rng.randint(1, s - size - 1)
        rect = (x - 2, y - 2, x + size + 2, y + size + 2)
        if all(rect[2] <= f[0] or f[2] <= rect[0] or rect[3] <= f[1] or f[3] <= rect[1] for f in forbidden):
            boxes.append((x, y, size))
            forbidden.append(rect)
        elif rng.random() < 0.02:  # crowded canvas: start over with fresh positions
            boxes.clear()
            forbidden = forbidden[:2]
    cells = (panel - opts.cell_offset) // 2
    pattern, digit, mark = rng.choice(PATTERNS), rng.choice(DIGITS), rng.choice(MARKS)
    digit_cell = ((cells - 5) // 2, (cells - 7) // 2)  # a 7-cell digit fills a 16 px panel's height: no room to move
    if opts.fine_jitter:
        mark_cell = (rng.randint(0, cells - 5), rng.randint(0, cells - 5))
    else:
        mark_cell = ((cells - 5) // 2, (cells - 5) // 2)
    return Scene(colour, shape, count, tuple(boxes), pattern, digit, digit_cell, mark, mark_cell)


def _draw_halftone(draw: ImageDraw.ImageDraw, bitmap: Sequence[str], origin: tuple[int, int]) -> None:
    """Ink every '#' of `bitmap` as a 2x2 dark/light checker cell whose top-left pixel is `origin` + 2*(col, row)."""
    ox, oy = origin
    for row, line in enumerate(bitmap):
        for col, ch in enumerate(line):
            if ch != "#":
                continue
            x, y = ox + 2 * col, oy + 2 * row
            draw.point([(x, y), (x + 1, y + 1)], fill=(INK_DARK,) * 3)
            draw.point([(x + 1, y), (x, y + 1)], fill=(INK_LIGHT,) * 3)


def _texture(image: Image.Image, mask: Image.Image, pattern: str, off: int) -> Image.Image:
    """Modulate every 2x2 halftone cell lying wholly inside the shapes by +-PATTERN_DELTA.

    Rows alternate for "striped", a checkerboard for "checkered". Each cell's mean stays the shape colour,
    and cells only partly inside a shape stay plain, so the LR view is the same for every pattern.
    """
    arr = np.asarray(image, dtype=np.int16).copy()
    inside = np.asarray(mask) > 0
    n = (arr.shape[0] - off) // 2
    cells = inside[off: off + 2 * n, off: off + 2 * n].reshape(n, 2, n, 2).all(axis=(1, 3))
    sign = np.array([[1, 1], [-1, -1]]) if pattern == "striped" else np.array([[1, -1], [-1, 1]])
    modulation = np.kron(cells, sign) * PATTERN_DELTA  # [2n, 2n]
    arr[off: off + 2 * n, off: off + 2 * n] += modulation[:, :, None].astype(np.int16)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def render_scene(scene: Scene, opts: SynthOptions) -> Image.Image:
    """Pixels of a scene: RGB, `image_size` square, no antialiasing (exact colours)."""
    s, panel, off = opts.image_size, opts.panel, opts.cell_offset
    image = Image.new("RGB", (s, s), BACKGROUND)
    draw = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    mask = Image.new("L", (s, s), 0)
    mask_draw = ImageDraw.Draw(mask)
    for x, y, size in scene.boxes:
        for d, colour in ((draw, fill), (mask_draw, 255)):
            if scene.shape == "circle":
                d.ellipse((x, y, x + size - 1, y + size - 1), fill=colour)
            elif scene.shape == "square":
                d.rectangle((x, y, x + size - 1, y + size - 1), fill=colour)
            else:
                d.polygon([(x + size // 2, y), (x, y + size - 1), (x + size - 1, y + size - 1)], fill=colour)
    if scene.pattern != "plain":
        image = _texture(image, mask, scene.pattern, off)
        draw = ImageDraw.Draw(image)
    for px, bitmap, cell in ((0, DIGIT_FONT[scene.digit], scene.digit_cell),
                             (s - panel, MARK_FONT[scene.mark], scene.mark_cell)):
        draw.rectangle((px, px, px + panel - 1, px + panel - 1), fill=(PANEL_GREY,) * 3)
        _draw_halftone(draw, bitmap, (px + off + 2 * cell[0], px + off + 2 * cell[1]))
    return image


# Drawn like a training scene (one shape size, the digit where `sample_scene` puts it), so the demo asks
# the trained model about something it can know.
DEMO_SCENE = Scene(colour="blue", shape="circle", count=3, boxes=((26, 28, 36), (76, 22, 36), (48, 72, 36)),
                   pattern="striped", digit="7", digit_cell=(1, 0), mark="cross", mark_cell=(1, 1))


def write_demo_image(path: str | Path) -> Path:
    """The bundled chat example (`mgm/serve/examples/tiny_demo.png`): 3 striped blue circles, digit 7, a cross."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_scene(DEMO_SCENE, SynthOptions()).save(path)
    return path
