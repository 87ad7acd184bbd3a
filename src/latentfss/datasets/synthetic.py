"""A synthetic PASCAL-5i stand-in in the VOC2012 layout, generated deterministically from a seed.

20 classes, each one colour family x one texture pattern, so that, as on PASCAL (a patch of fur
or a wheel already carries its class), any part of an object shows its class. Class 5i + p + 1
(fold i's novel classes for p = 0..4) has pattern PATTERNS[p] and colour COLOURS[i] for p < 3,
COLOURS[i + 1] for p >= 3: a bijection onto the 4 x 5 grid. So every novel class shares its
pattern with three base classes and its colour with two or three, yet no base class has the
same pair: knowledge can transfer, but only if the features compose colour and pattern; and
within a fold three novel classes share one colour and two another, so colour alone does not
tell them apart. Every pattern is two tones of the colour over half the object's area each, so
an object's colour statistics tell its pattern only as far as blur and JPEG soften the finer
patterns (PERIODS). Patterns keep their scale and stand upright whatever the object's size and
pose, as natural textures do, and are symmetric under a horizontal flip, as the classes of
PASCAL are (training flips images). Outlines (SHAPES) are drawn per object whatever its class.
Every image holds 1-4 objects of any class over a cluttered textured background, so training
images contain unlabelled objects of novel classes: the latent classes the method mines.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from latentfss.config import SyntheticConfig
from latentfss.episodes import IGNORE

COLOURS = ("red", "green", "blue", "yellow")
COLOUR_HUES = (0.0, 0.33, 0.61, 0.14)
PATTERNS = ("striped", "checkered", "dotted", "zigzag", "speckled")
PERIODS = {"striped": 8.0, "zigzag": 10.0, "dotted": 12.0, "speckled": 14.0, "checkered": 16.0}
SHAPES = ("disc", "square", "triangle", "star", "cross")  # drawn per object, whatever its class
NUM_CLASSES = len(PATTERNS) * len(COLOURS)


def class_factors(class_id: int) -> tuple[str, str]:
    """(colour, pattern) of a 1-based class id: fold i's classes (5i+1..5i+5) are the five
    patterns, the first three in colour i, the last two in colour i + 1."""
    fold, p = divmod(class_id - 1, len(PATTERNS))
    return COLOURS[(fold + (p >= 3)) % len(COLOURS)], PATTERNS[p]


CLASS_NAMES = tuple("-".join(class_factors(c)) for c in range(1, NUM_CLASSES + 1))
FACTORS = {"colour": COLOURS, "pattern": PATTERNS}  # what the encoder's pre-training is told
STREAMS = ("train", "val", "pretrain", "pretrain-heldout")  # disjoint random streams of images
PROVENANCE = "synthetic.json"  # what make-synthetic records beside the images (class names...)


def factor_table() -> np.ndarray:
    """(NUM_CLASSES + 1, 9) float32 in {0, 1}: row c marks class c's colour and pattern among
    the factor values (COLOURS, then PATTERNS); row 0, the background, marks none."""
    values = [value for names in FACTORS.values() for value in names]
    table = np.zeros((NUM_CLASSES + 1, len(values)), np.float32)
    for c in range(1, NUM_CLASSES + 1):
        table[c, [values.index(v) for v in class_factors(c)]] = 1
    return table


def _polygon(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-radius outline of a shape family as (V, 2) points, before scale and rotation."""
    if shape == "disc":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.8
    if shape == "triangle":
        t = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "star":
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.5))
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if shape == "cross":
        a = rng.uniform(0.28, 0.38)  # half the arm width
        return np.array(
            [
                [-a, -1],
                [a, -1],
                [a, -a],
                [1, -a],
                [1, a],
                [a, a],
                [a, 1],
                [-a, 1],
                [-a, a],
                [-1, a],
                [-1, -a],
                [-a, -a],
            ]
        )
    raise ValueError(shape)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, np.clip(s, 0, 1), np.clip(v, 0, 1))) * 255


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], (H, W): a random grid upsampled bicubically."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    up = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 255


def _pattern(pattern: str, rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where the light tone goes, (H, W) float in {0, 1}, about half of any patch of the object:
    x, y are pixel offsets from the object's centre. Each pattern has its own scale (PERIODS,
    in pixels, +-8%) and stands upright within +-15 degrees, as natural textures keep theirs
    whatever the size and pose of their object."""
    period = PERIODS[pattern] * rng.uniform(0.92, 1.08)
    tilt = rng.uniform(-0.26, 0.26)
    fu = (x * np.cos(tilt) + y * np.sin(tilt)) / period
    fv = (y * np.cos(tilt) - x * np.sin(tilt)) / period
    if pattern == "striped":
        light = fv % 1 < 0.5
    elif pattern == "checkered":
        light = (np.floor(fu) + np.floor(fv)) % 2 == 0
    elif pattern == "dotted":  # dark dots of radius 0.4 period: half the area
        light = (fu % 1 - 0.5) ** 2 + (fv % 1 - 0.5) ** 2 > 0.16
    elif pattern == "zigzag":  # stripes bent every half period: chevrons
        light = (fv + np.abs(2 * (fu / 2 % 1) - 1)) % 1 < 0.5
    else:  # speckled: blotches of noise, split at its median
        noise = _smooth_noise(rng, *x.shape, cells=max(4, round(1.5 * max(x.shape) / period)))
        light = noise > np.median(noise)
    return light.astype(np.float32)


def _appearance(
    colour: str, pattern: str, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, r: float
) -> np.ndarray:
    """Texture of one object of radius r, (H, W, 3) float: a light and a dark tone of its
    colour family, drawn the same way for every pattern, laid out by the pattern, under a
    shading gradient across the object."""
    hue = COLOUR_HUES[COLOURS.index(colour)] + rng.uniform(-0.035, 0.035)
    sat, val = rng.uniform(0.55, 0.95), rng.uniform(0.6, 0.95)
    light, dark = _hsv(hue, sat, val), _hsv(hue + 0.04, sat * 0.7, val * 0.45)
    s = _pattern(pattern, rng, x, y)
    shade = 1 + 0.25 * (x * np.cos(rng.uniform(0, 6.3)) + y * np.sin(rng.uniform(0, 6.3))) / (2 * r)
    return (s[..., None] * light + (1 - s[..., None]) * dark) * shade[..., None]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted textured scene with clutter (never labelled): (H, W, 3) float in 0..255."""
    base, tint = _smooth_noise(rng, height, width, cells=4), _smooth_noise(rng, height, width, 7)
    hue = rng.random()
    low, high = _hsv(hue, rng.uniform(0.05, 0.3), 0.3), _hsv(hue + 0.1, rng.uniform(0.05, 0.3), 0.8)
    image = base[..., None] * high + (1 - base[..., None]) * low
    image *= (0.8 + 0.4 * tint)[..., None]
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    side = min(height, width)
    for _ in range(rng.integers(4, 12)):  # clutter: thin strokes and small blobs, low saturation
        hsv = rng.random(), rng.uniform(0, 0.35), rng.uniform(0.2, 0.9)
        colour = tuple(int(c) for c in _hsv(*hsv))
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.02, 0.08) * side
        if rng.random() < 0.5:
            angle = rng.uniform(0, np.pi)
            end = (x + 3 * r * np.cos(angle), y + 3 * r * np.sin(angle))
            draw.line([(x, y), end], fill=colour, width=int(rng.integers(1, 4)))
        else:
            draw.ellipse([x - r, y - r * rng.uniform(0.4, 1), x + r, y + r], fill=colour)
    return np.asarray(canvas, dtype=np.float32)


def _boundary_band(labels: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` of a label change: VOC's 255 band around every object."""
    band = np.zeros(labels.shape, dtype=bool)
    padded = np.pad(labels, radius, mode="edge")
    height, width = labels.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = padded[radius + dy : radius + dy + height, radius + dx : radius + dx + width]
            band |= shifted != labels
    return band


def render_image(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene: an RGB image (H, W, 3) uint8 and its label map (H, W) uint8 in 0..20 | 255.

    Objects are painted back to front, so later ones occlude earlier ones; each gets a random
    scale, aspect, rotation, position (objects may leave the frame) and colour jitter.
    """
    height, width = (int(s) for s in rng.integers(cfg.min_size, cfg.max_size + 1, size=2))
    image = _background(rng, height, width)
    labels = np.zeros((height, width), dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    side = min(height, width)
    for _ in range(rng.integers(cfg.min_objects, cfg.max_objects + 1)):
        class_id = int(rng.integers(1, NUM_CLASSES + 1))
        colour, pattern = class_factors(class_id)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        radius = rng.uniform(0.14, 0.32) * side
        aspect = rng.uniform(0.8, 1.25)
        angle = rng.uniform(0, 2 * np.pi)
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        outline = (_polygon(shape, rng) * [aspect, 1 / aspect]) @ rot.T * radius + [cx, cy]
        silhouette = Image.new("L", (width, height), 0)
        ImageDraw.Draw(silhouette).polygon([tuple(p) for p in outline], fill=1)
        inside = np.asarray(silhouette, dtype=bool)
        if not inside.any():
            continue
        texture = _appearance(colour, pattern, rng, xs - cx, ys - cy, radius)
        image[inside] = texture[inside]
        labels[inside] = class_id
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    canvas = canvas.filter(ImageFilter.GaussianBlur(0.6))
    noisy = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 4, (height, width, 3))
    if cfg.boundary:
        labels[_boundary_band(labels, cfg.boundary)] = IGNORE
    return np.clip(noisy, 0, 255).astype(np.uint8), labels


def image_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """Each image has its own random stream, so any image can be regenerated alone and in any
    order, and no image of one of STREAMS is an image of another."""
    return np.random.default_rng([seed, STREAMS.index(stream), index])
