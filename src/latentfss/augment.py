"""Training augmentation: joint scale-crop-flip of image and mask (in loader workers) and
SimCLR-style strong photometric augmentation of pseudo-labelled images (batched on the device)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from latentfss.episodes import IGNORE


def scale_crop_flip(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    crop: int,
    scale: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Random rescale (image bilinear, mask nearest), a random crop x crop window (padding the
    image with 0 and the mask with IGNORE where the image is smaller) and a horizontal flip.

    image (H, W, 3) uint8, mask (H, W) uint8 -> (crop, crop, 3), (crop, crop).
    """
    factor = rng.uniform(*scale)
    height, width = (max(1, round(s * factor)) for s in mask.shape)
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
    out_image = np.zeros((crop, crop, 3), dtype=np.uint8)
    out_mask = np.full((crop, crop), IGNORE, dtype=np.uint8)
    top = int(rng.integers(0, max(height - crop, 0) + 1))
    left = int(rng.integers(0, max(width - crop, 0) + 1))
    y, x = (
        int(rng.integers(0, max(crop - height, 0) + 1)),
        int(rng.integers(0, max(crop - width, 0) + 1)),
    )
    h, w = min(crop, height), min(crop, width)
    out_image[y : y + h, x : x + w] = image[top : top + h, left : left + w]
    out_mask[y : y + h, x : x + w] = mask[top : top + h, left : left + w]
    if rng.random() < 0.5:
        out_image, out_mask = out_image[:, ::-1], out_mask[:, ::-1]
    return np.ascontiguousarray(out_image), np.ascontiguousarray(out_mask)


def _grey(images: torch.Tensor) -> torch.Tensor:
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _rotate_hue(images: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Hue rotation about the grey axis (YIQ), angle (B,) in radians."""
    to_yiq = images.new_tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]
    )
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rotate = torch.stack(
        [
            torch.stack([one, zero, zero], -1),
            torch.stack([zero, cos, -sin], -1),
            torch.stack([zero, sin, cos], -1),
        ],
        dim=1,
    )  # (B, 3, 3)
    matrix = torch.linalg.inv(to_yiq) @ rotate @ to_yiq
    return torch.einsum("bij,bjhw->bihw", matrix, images)


def strong_photometric(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SimCLR's colour distortion and blur, each image its own draw: colour jitter (brightness,
    contrast, saturation 0.8, hue 0.2) with p=0.8, grayscale with p=0.2, Gaussian blur
    (sigma 0.1-2.0, a kernel of a tenth of the image's height, as SimCLR's) with p=0.5.
    images (B, 3, H, W) in [0, 1] -> same."""
    b, device = images.shape[0], images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator, device=device) * (high - low) + low).view(
            b, 1, 1, 1
        )

    def chance(p: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator, device=device) < p).view(b, 1, 1, 1)

    jitter = chance(0.8)
    out = images * uniform(0.2, 1.8)  # brightness
    out = (out - out.mean(dim=(1, 2, 3), keepdim=True)) * uniform(0.2, 1.8) + out.mean(
        dim=(1, 2, 3), keepdim=True
    )  # contrast
    out = _grey(out) + (out - _grey(out)) * uniform(0.2, 1.8)  # saturation
    out = _rotate_hue(out.clamp(0, 1), uniform(-0.2, 0.2).view(b) * 2 * torch.pi)
    out = torch.where(jitter, out.clamp(0, 1), images)
    out = torch.where(chance(0.2), _grey(out).expand_as(out), out)
    blurred = _gaussian_blur(out, uniform(0.1, 2.0).view(b), blur_radius(images.shape[2]))
    return torch.where(chance(0.5), blurred, out).clamp(0, 1)


def blur_radius(height: int) -> int:
    """SimCLR's blur kernel: kernel_size = height // 10, 2 * (kernel_size // 2) + 1 taps."""
    return height // 10 // 2


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma (B,) over 2 * radius + 1 taps, as one
    grouped convolution."""
    b, c, h, w = images.shape
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, k)
    flat = F.pad(images.reshape(1, b * c, h, w), (radius,) * 4, mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=b * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=b * c)
    return flat.view(b, c, h, w)
