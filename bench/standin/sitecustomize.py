"""bench/rehearsal.py's stand-in encoder, for the processes it starts (this folder is on their
PYTHONPATH and $LATENTFSS_STANDIN is 1): every `Encoder(arch)` is `StandIn(arch)`, the same
output as the dilated ResNet's layer3 (its channels at stride 8, the same grid sizes) from a
fixed random projection of 8 x 8 pixel means, so that a rehearsal's data path (Zarr sizes,
prototypes, K-Means, masks, the bank, evaluation at full resolution) is real and its encoder
cheap. It never reaches the package: latentfss itself has no such choice."""

import os

if os.environ.get("LATENTFSS_STANDIN") == "1":
    import torch
    import torch.nn.functional as F
    from torch import nn

    import latentfss.encoder

    class StandIn(nn.Module):
        def __init__(self, arch: str) -> None:
            super().__init__()
            self.arch = arch
            self.channels = 256 * latentfss.encoder.DEPTHS[arch][0].expansion
            generator = torch.Generator().manual_seed(0)
            self.project = nn.Conv2d(3, self.channels, 1)
            with torch.no_grad():
                self.project.weight.copy_(torch.randn(self.channels, 3, 1, 1, generator=generator))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            pooled = F.avg_pool2d(images, 8, ceil_mode=True, count_include_pad=False)
            return torch.tanh(self.project(pooled))

        def train(self, mode: bool = True) -> "StandIn":
            return super().train(mode)

    latentfss.encoder.Encoder = StandIn
