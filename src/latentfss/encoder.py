"""The frozen-BN ResNet encoder: conv1..layer3, output stride 8, no final ReLU (section 4.1).

Layer3's stride is replaced by dilation 2 (DeepLab/PSPNet style; torchvision's
`replace_stride_with_dilation=[False, True, True]` with layer4 dropped), so features are
(B, C, ceil(H/8), ceil(W/8)): C = 256 for ResNet-18, 1024 for ResNet-50/101. The last ReLU is
removed so features may be negative, as cosine matching wants (paper, "Network structure").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from latentfss.errors import InputError

log = logging.getLogger(__name__)

ARCHS = ("resnet18", "resnet50", "resnet101")
STRIDE = 8
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGENET = {  # torchvision's original (V1) weights, as in the FSS literature
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
}


@dataclass(frozen=True)
class EncoderConfig:
    """Backbone and initial weights (config section `encoder`)."""

    arch: str = "resnet18"
    weights: str = "none"  # none | imagenet | path to a torchvision-format state dict
    calibration_images: int = 512  # weights none: train images that set BatchNorm statistics

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}")


class Normalise:
    """uint8 (..., 3, H, W) on the host -> ImageNet-normalised float on the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)

    def unit(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, non_blocking=True).float() / 255

    def __call__(self, unit_images: torch.Tensor) -> torch.Tensor:
        return (unit_images - self.mean) / self.std


def feature_size(size: int) -> int:
    """Side of the feature grid for an input side: conv1, maxpool and layer2 halve it (ceil)."""
    for _ in range(3):
        size = (size - 1) // 2 + 1
    return size


def _dilate(layer: nn.Sequential) -> None:
    """Turn a stride-2 layer into stride 1 with dilation 2, as torchvision's dilate=True: the
    3x3 conv that carried the stride keeps dilation 1, every later 3x3 conv gets dilation 2."""
    for module in layer.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
        elif isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            module.dilation, module.padding = (2, 2), (2, 2)


def _block_without_relu(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision residual block's forward without its final ReLU."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    elif isinstance(block, BasicBlock):
        out = block.bn2(block.conv2(out))
    else:
        raise TypeError(type(block))
    return out + identity


class Encoder(nn.Module):
    """ResNet conv1..layer3. Input (B, 3, H, W) ImageNet-normalised; output (B, C, h, w)."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.arch = arch
        net = getattr(torchvision.models, arch)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        _dilate(self.layer3)
        self.channels = self.layer3[-1].bn2.num_features * (
            Bottleneck.expansion if isinstance(self.layer3[-1], Bottleneck) else 1
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer2(self.layer1(x))
        for block in self.layer3[:-1]:
            x = block(x)
        return _block_without_relu(self.layer3[-1], x)

    def train(self, mode: bool = True) -> Encoder:
        """BatchNorm stays frozen (eval statistics) in training too, as in the FSS literature."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self


@torch.no_grad()
def calibrate_batchnorm(encoder: Encoder, batches: Iterable[torch.Tensor]) -> int:
    """Data-dependent initialisation for random weights: every BatchNorm's running mean and
    variance become the statistics of its input over `batches` (normalised images), so each
    channel is centred and scaled on real data. Without it a random ResNet's layer3 features
    are dominated by one direction and by zero-padding border effects (position), not content.
    Returns the number of images seen.
    """
    norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over all batches
        norm.train()
    seen = sum(len(encoder(images)) for images in batches)
    for norm in norms:
        norm.momentum = 0.1
        norm.eval()
    return seen


def _imagenet_state(arch: str) -> dict:
    weights = _IMAGENET[arch]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # no network: say where the file must go
        raise InputError(
            f"encoder.weights: imagenet weights for {arch} are not in {cached} and could not be "
            f"downloaded ({type(e).__name__}); place {weights.url} there or give a path"
        ) from None


def _local_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: encoder weights not found") from None
    except Exception as e:
        raise InputError(
            f"{path}: not a readable PyTorch state dict ({type(e).__name__})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}


def load_encoder(path: str | Path) -> Encoder:
    """An encoder saved by `latentfss extract-features` (encoder_init.pt)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: missing; run `latentfss extract-features` first") from None
    encoder = Encoder(saved["encoder"]["arch"])
    encoder.load_state_dict(saved["state_dict"])
    return encoder


def build_encoder(cfg: EncoderConfig) -> Encoder:
    """The encoder with its initial weights; every missing or unexpected key is reported."""
    encoder = Encoder(cfg.arch)
    if cfg.weights != "none":
        state = (
            _imagenet_state(cfg.arch)
            if cfg.weights == "imagenet"
            else _local_state(Path(cfg.weights))
        )
        dropped = ("layer4.", "fc.")  # the stages the paper removes
        state = {k: v for k, v in state.items() if not k.startswith(dropped)}
        if not state.keys() & encoder.state_dict().keys():
            raise InputError(f"encoder.weights: {cfg.weights} shares no key with {cfg.arch}")
        result = encoder.load_state_dict(state, strict=False)
        for kind, keys in (
            ("missing", result.missing_keys),
            ("unexpected", result.unexpected_keys),
        ):
            if keys:
                log.warning("%d %s keys in %s: %s", len(keys), kind, cfg.weights, ", ".join(keys))
    params = sum(p.numel() for p in encoder.parameters())
    log.info("encoder %s (weights: %s): %.2fM parameters, %d channels", cfg.arch, cfg.weights,
             params / 1e6, encoder.channels)  # fmt: skip
    return encoder
