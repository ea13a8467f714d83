"""Backbones from `timm.create_model`, with a small-image stem option.

timm's ResNet stem (7x7 stride-2 conv + max-pool) shrinks a 28 px image to 7 px before the
first block. For 8-32 px inputs the `stem` option swaps it for a single 3x3 conv:
- `cifar`: stride 1, no max-pool (what the published CIFAR numbers use; 4x the compute of `small`);
- `small`: stride 2, no max-pool (the CPU default: 28 px -> 14 px at the first block);
- `standard`: timm's own stem.
The replacement stem is as wide as the first stage (timm's is always 64 channels), so a
half-width net does not spend a quarter of its compute widening 32 channels back from 64.
`layers` / `channels` override the depth and width of timm's ResNet family (timm passes
them to `ResNet.__init__`), e.g. the quarter-width [1,1,1,1] net of the CPU default."""
from __future__ import annotations

import timm
import torch.nn as nn

STEMS = ("standard", "small", "cifar")


def create_backbone(cfg: dict, in_chans: int) -> nn.Module:
    kwargs = {}
    if cfg.get("layers"):
        kwargs["layers"] = tuple(cfg["layers"])
    if cfg.get("channels"):
        kwargs["channels"] = tuple(cfg["channels"])
    model = timm.create_model(cfg["name"], pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    stem = cfg.get("stem", "standard")
    if stem != "standard":
        if not (hasattr(model, "conv1") and hasattr(model, "maxpool")):
            raise ValueError(f"backbone.stem={stem!r} needs a ResNet-style model with conv1/maxpool; {cfg['name']} has none")
        first = model.layer1[0]
        width = first.conv1.out_channels
        model.conv1 = nn.Conv2d(in_chans, width, 3, stride=1 if stem == "cifar" else 2, padding=1, bias=False)
        model.bn1 = nn.BatchNorm2d(width)
        model.maxpool = nn.Identity()
        c1 = first.conv1
        first.conv1 = nn.Conv2d(width, width, c1.kernel_size, stride=c1.stride, padding=c1.padding, bias=False)
        if first.downsample is not None:
            ds = first.downsample[0]
            if ds.out_channels == width and ds.stride == (1, 1):
                first.downsample = None  # the stage's input already has its width
            else:
                first.downsample[0] = nn.Conv2d(width, ds.out_channels, ds.kernel_size, stride=ds.stride, bias=False)
    return model
