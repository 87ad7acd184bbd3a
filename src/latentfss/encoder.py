"""The frozen-BN ResNet encoder: conv1..layer3, output stride 8, no final ReLU (section 4.1).

Layer3's stride is replaced by dilation 2 (DeepLab/PSPNet style; torchvision's
`replace_stride_with_dilation=[False, True, True]` with layer4 dropped), so features are
(B, C, ceil(H/8), ceil(W/8)): C = 256 for ResNet-18, 1024 for ResNet-50/101. The last ReLU is
removed so features may be negative, as cosine matching wants (paper, "Network structure").

The network is torchvision's ResNet (V1.5: the stride in the 3x3 conv), module for module, so
its ImageNet weights load by name, and random weights for a seed are torchvision's. It is
written out here because importing torchvision costs every stage process 1.7 s (it imports
torch._dynamo), more than some stages compute (bench/limits.py measures start-up).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from latentfss import layout
from latentfss.config import EncoderConfig
from latentfss.errors import InputError
from latentfss.fs import read_torch
from latentfss.runtime import autocast

log = logging.getLogger(__name__)

DROPPED = ("layer4.", "fc.")  # what the paper removes of a ResNet (weights keep them)
STRIDE = 8
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGENET = {  # torchvision's original (IMAGENET1K_V1) weights, as in the FSS literature
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


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


class _Residual(nn.Module):
    """A residual block: ReLU(residual(x) + shortcut(x)), the shortcut a projection or x."""

    expansion = 1
    relu: nn.ReLU
    downsample: nn.Module | None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def without_relu(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its final ReLU."""
        return self.residual(x) + (x if self.downsample is None else self.downsample(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.without_relu(x))


class BasicBlock(_Residual):
    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_Residual):
    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))


DEPTHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def _layer(
    block: type[_Residual], inplanes: int, planes: int, depth: int, stride: int
) -> nn.Sequential:
    """torchvision's ResNet._make_layer: the projection shortcut is built before the blocks."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
        )
    return nn.Sequential(
        block(inplanes, planes, stride, downsample), *(block(out, planes) for _ in range(depth - 1))
    )


def _dilate(layer: nn.Sequential) -> None:
    """Turn a stride-2 layer into stride 1 with dilation 2, as torchvision's dilate=True: the
    3x3 conv that carried the stride keeps dilation 1, every later 3x3 conv gets dilation 2."""
    for module in layer.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
        elif isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            module.dilation, module.padding = (2, 2), (2, 2)


def _resnet(module: nn.Module, arch: str, outputs: int) -> list[nn.Sequential]:
    """torchvision's ResNet, module for module and in its order of random draws: the stem set
    on `module`, its four layers returned and the classifier of `outputs` built (and returned
    last), every conv Kaiming-initialised."""
    block, depths = DEPTHS[arch]
    module.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    module.bn1 = nn.BatchNorm2d(64)
    module.relu = nn.ReLU(inplace=True)
    module.maxpool = nn.MaxPool2d(3, 2, 1)
    layers, inplanes = [], 64
    for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
        layers.append(_layer(block, inplanes, planes, depth, 1 if i == 0 else 2))
        inplanes = planes * block.expansion
    fc = nn.Linear(inplanes, outputs)
    for conv in itertools.chain([module.conv1], *(layer.modules() for layer in layers)):
        if isinstance(conv, nn.Conv2d):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return [*layers, fc]


class Encoder(nn.Module):
    """ResNet conv1..layer3. Input (B, 3, H, W) ImageNet-normalised; output (B, C, h, w)."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.arch = arch
        # layer4 and the classifier are built, initialised and dropped only so that this draws
        # the same random numbers as torchvision's resnet: a seed gives the same weights, and
        # what is drawn after (the mining head, training) stays the same too.
        self.layer1, self.layer2, self.layer3, _, _ = _resnet(self, arch, 1000)
        _dilate(self.layer3)
        self.channels = 256 * DEPTHS[arch][0].expansion

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer2(self.layer1(x))
        for block in self.layer3[:-1]:
            x = block(x)
        return self.layer3[-1].without_relu(x)

    def train(self, mode: bool = True) -> Encoder:
        """BatchNorm stays frozen (eval statistics) in training too, as in the FSS literature."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self


class Classifier(nn.Module):
    """The whole ResNet, undilated, global average pooling and `outputs` logits: what
    `latentfss pretrain-encoder` trains. Its state dict has torchvision's layout, so an Encoder
    loads it as any other weights (layer4 and fc dropped, layer3 dilated)."""

    def __init__(self, arch: str, outputs: int) -> None:
        super().__init__()
        self.layer1, self.layer2, self.layer3, self.layer4, self.fc = _resnet(self, arch, outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def encode_batches(
    encoder: Encoder, batches: Sequence[torch.Tensor], chunks: int = 1
) -> list[torch.Tensor]:
    """Layer3 features of normalised image batches (N_i, 3, H_i, W_i), in order. The batches
    of one image size go through the encoder together, so images that differ in size
    (`evaluate.resize: none`) cost one pass per distinct size.

    With `chunks` > 1 and autograd on (`train.micro_batches`), each pass is cut into that many
    parts whose activations are not kept but recomputed, one part at a time, in the backward
    pass (activation checkpointing): the backward holds one part's activations, for one more
    forward pass of the encoder, and the features and gradients are those of a single pass
    (BatchNorm is frozen, so an image's features do not depend on the others')."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, batch in enumerate(batches):
        by_size.setdefault(tuple(batch.shape[1:]), []).append(i)
    feats: list[torch.Tensor] = [torch.empty(0)] * len(batches)
    for members in by_size.values():
        images = torch.cat([batches[i] for i in members])
        images = images.contiguous(memory_format=torch.channels_last)
        if chunks > 1 and torch.is_grad_enabled():
            parts = images.tensor_split(chunks)
            out = torch.cat([checkpoint(encoder, part, use_reentrant=False) for part in parts])
        else:
            out = encoder(images)
        for i, f in zip(members, out.split([len(batches[i]) for i in members]), strict=True):
            feats[i] = f
    return feats


@torch.inference_mode()
def encode_each(
    encoder: Encoder, images: Sequence[torch.Tensor], normalise: Normalise
) -> list[torch.Tensor]:
    """Float32 layer3 features (C, h, w) of each uint8 (3, H, W) image (`encode_batches`,
    bf16 autocast on CUDA)."""
    with autocast(normalise.device):
        feats = encode_batches(encoder, [normalise(normalise.unit(i[None])) for i in images])
    return [f[0].float() for f in feats]


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


# encoder.weights: synthetic: made once by `latentfss pretrain-encoder` at config.yaml's `pretrain`
# recipe and shipped in the package, so that every machine starts from the same bits
SYNTHETIC, SYNTHETIC_SHA256 = layout.SYNTHETIC_WEIGHTS, layout.SYNTHETIC_SHA256


def _synthetic_state(arch: str) -> dict:
    if arch != "resnet18":
        raise InputError(f"encoder.weights: synthetic is a resnet18, not a {arch}")
    try:
        digest = hashlib.sha256(SYNTHETIC.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise InputError(f"{SYNTHETIC}: not found; reinstall latentfss, which ships it") from None
    if digest != SYNTHETIC_SHA256:
        raise InputError(
            f"{SYNTHETIC}: sha256 {digest[:16]}..., expected {SYNTHETIC_SHA256[:16]}...: "
            "altered or damaged; restore it (git checkout, or reinstall latentfss)"
        )
    return read_torch(SYNTHETIC, "reinstall latentfss")["state_dict"]


def _imagenet_state(arch: str) -> dict:
    url = _IMAGENET[arch]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if cached.is_file():
        return read_torch(cached, f"place {url} there")
    try:
        return torch.hub.load_state_dict_from_url(
            url, progress=False, check_hash=True, weights_only=True
        )
    except Exception as e:  # no network: say where the file must go
        raise InputError(
            f"encoder.weights: imagenet weights for {arch} are not in {cached} and could not be "
            f"downloaded ({type(e).__name__}); place {url} there or give a path"
        ) from None


def _local_state(path: Path) -> dict:
    state = read_torch(path, "give the path of a torchvision-format state dict")
    state = state.get("state_dict", state)
    return {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}


def load_encoder(path: str | Path) -> Encoder:
    """An encoder saved by `latentfss extract-features` (encoder_init.pt)."""
    saved = read_torch(path, "run `latentfss extract-features` first")
    encoder = Encoder(saved["encoder"]["arch"])
    encoder.load_state_dict(saved["state_dict"])
    return encoder


def build_encoder(cfg: EncoderConfig) -> Encoder:
    """The encoder with its initial weights; every missing or unexpected key is reported."""
    if cfg.weights == "pretrain":
        raise InputError(
            "encoder.weights: pretrain stands for the weights `latentfss pretrain-encoder --out "
            "FILE` writes (the workflow passes them); give that file's path"
        )
    encoder = Encoder(cfg.arch)
    if cfg.weights != "none":
        sources = {"synthetic": _synthetic_state, "imagenet": _imagenet_state}
        if cfg.weights in sources:
            state = sources[cfg.weights](cfg.arch)
        else:
            state = _local_state(Path(cfg.weights))
        state = {k: v for k, v in state.items() if not k.startswith(DROPPED)}
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
    log.info(
        "encoder %s (weights: %s): %.2fM parameters, %d channels",
        cfg.arch,
        cfg.weights,
        params / 1e6,
        encoder.channels,
    )
    return encoder
