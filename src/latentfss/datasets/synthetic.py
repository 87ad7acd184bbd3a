"""A synthetic PASCAL-5i stand-in in the VOC2012 layout, generated deterministically from a seed.

20 classes, each one shape family x one appearance family (texture pattern + hue):

    class k (label k+1):  shape = SHAPES[k % 5],  appearance = APPEARANCES[(k // 5 + k % 5) % 4]

The map is a bijection onto the 5 x 4 grid, and fold i's novel classes (5i+1..5i+5) are one of
each shape with four different appearances. So every novel class shares its shape with three
base classes and its appearance with others, yet no base class has the same pair: knowledge can
transfer, but only if the features compose shape and appearance. Every image holds 1-4 objects
of any class over a cluttered textured background, so training images contain unlabelled
objects of novel classes: the latent classes the method mines.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from latentfss.episodes import IGNORE

SHAPES = ("disc", "square", "triangle", "star", "cross")
APPEARANCES = ("red-striped", "green-checkered", "blue-dotted", "yellow-speckled")
APPEARANCE_HUES = (0.0, 0.33, 0.61, 0.14)
NUM_CLASSES = len(SHAPES) * len(APPEARANCES)


def class_traits(class_id: int) -> tuple[str, str]:
    """(shape, appearance) of a 1-based class id."""
    k = class_id - 1
    return SHAPES[k % len(SHAPES)], APPEARANCES[(k // len(SHAPES) + k % len(SHAPES)) % 4]


CLASS_NAMES = tuple("-".join(reversed(class_traits(c))) for c in range(1, NUM_CLASSES + 1))


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings (config section `synthetic`); sizes in pixels."""

    seed: int = 0
    num_train: int = 800
    num_val: int = 200
    min_size: int = 112
    max_size: int = 160
    min_objects: int = 1
    max_objects: int = 4
    boundary: int = 1
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not 32 <= self.min_size <= self.max_size:
            raise ValueError("need 32 <= min_size <= max_size")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError("num_train and num_val must be positive")
        if self.boundary < 0 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError("need boundary >= 0 and jpeg_quality in 1..100")


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


def _appearance(
    appearance: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """Texture of one object in its own rotated frame (u, v in object radii): (H, W, 3) float."""
    hue = APPEARANCE_HUES[APPEARANCES.index(appearance)] + rng.uniform(-0.035, 0.035)
    sat, val = rng.uniform(0.55, 0.95), rng.uniform(0.6, 0.95)
    light, dark = _hsv(hue, sat, val), _hsv(hue + 0.04, sat * 0.7, val * 0.45)
    freq = rng.uniform(2.0, 3.2)
    pattern = appearance.split("-")[1]
    if pattern == "striped":
        s = 0.5 + 0.5 * np.sin(2 * np.pi * freq * u)
    elif pattern == "checkered":
        s = ((np.floor(u * freq) + np.floor(v * freq)) % 2).astype(np.float32)
    elif pattern == "dotted":
        du, dv = (u * freq * 1.4) % 1 - 0.5, (v * freq * 1.4) % 1 - 0.5
        s = (du**2 + dv**2 > 0.09).astype(np.float32)
    else:  # speckled: isotropic blotches, so the frame does not matter
        s = (_smooth_noise(rng, *u.shape, cells=12) > 0.5).astype(np.float32)
    shade = 1 + 0.25 * (u * np.cos(rng.uniform(0, 6.3)) + v * np.sin(rng.uniform(0, 6.3))) / 2
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
        shape, appearance = class_traits(class_id)
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
        # object frame: undo the translation and rotation so the texture turns with the object
        u = ((xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)) / radius
        v = (-(xs - cx) * np.sin(angle) + (ys - cy) * np.cos(angle)) / radius
        image[inside] = _appearance(appearance, rng, u, v)[inside]
        labels[inside] = class_id
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    canvas = canvas.filter(ImageFilter.GaussianBlur(0.6))
    noisy = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 4, (height, width, 3))
    if cfg.boundary:
        labels[_boundary_band(labels, cfg.boundary)] = IGNORE
    return np.clip(noisy, 0, 255).astype(np.uint8), labels


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Each image has its own stream, so any image can be regenerated alone and in any order."""
    return np.random.default_rng([seed, ("train", "val").index(split), index])
