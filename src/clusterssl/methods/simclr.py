"""SimCLR (Chen et al., 2020): NT-Xent between two augmented views of each image.

Follows the paper; settings from solo-learn's CIFAR config (tau = 0.2, projector 2048 -> 256,
scaled down in small presets). Differs from solo-learn: the projector has a hidden BatchNorm
(Linear, BatchNorm, ReLU, Linear: the shared `mlp`) where solo-learn's is Linear-ReLU-Linear."""
from __future__ import annotations

from .base import Method, register
from .common import nt_xent


@register("simclr", order=60)
class SimCLR(Method):
    provenance = "paper: NT-Xent over 2N views; settings from solo-learn's CIFAR config"
    defaults = {
        "temperature": 0.2,
        "projector_layers": 2,
        "projector_hidden": 512,
        "projector_out": 128,
    }
    params_schema = {
        "temperature": {"type": "number", "exclusiveMinimum": 0},
        "projector_layers": {"$ref": "#/$defs/projector_layers"},
        "projector_hidden": {"$ref": "#/$defs/width"},
        "projector_out": {"$ref": "#/$defs/width"},
    }

    def __init__(self, backbone, cfg, num_classes, num_train):
        super().__init__(backbone, cfg, num_classes, num_train)
        self.projector = self.make_projector()

    def training_step(self, batch):
        z1, z2 = (self.projector(self.backbone(v)) for v in batch["views"])
        loss = nt_xent(z1, z2, self.cfg["temperature"])
        return {"loss": loss, "nt_xent": loss.detach()}
