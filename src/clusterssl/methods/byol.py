"""BYOL (Grill et al., NeurIPS 2020): the online network (backbone, projector, predictor)
predicts the projection an EMA target network gives for another view of the same image.

Follows the paper; settings from solo-learn's CIFAR config (EMA 0.99 -> 1 with a cosine
schedule, projector and predictor MLPs, scaled down in small presets). The loss sums both
directions, as the paper and solo-learn do: its gradient is 4x that of lightly's example, which
averages two negative cosines, so a learning rate taken from there is off by that factor."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Method, register
from .common import EMATeacher, mlp


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(prediction, target), averaged over the batch; no gradient into the target."""
    return (2 - 2 * F.cosine_similarity(prediction, target.detach(), dim=-1)).mean()


@register("byol", order=80)
class BYOL(Method):
    provenance = "paper: 2 - 2 cos(pred, sg(target)), EMA target; settings from solo-learn's CIFAR config"
    defaults = {
        "ema_momentum": 0.99,
        "projector_layers": 2,
        "projector_hidden": 512,
        "projector_out": 128,
        "predictor_hidden": 512,
    }
    params_schema = {
        "ema_momentum": {"$ref": "#/$defs/momentum"},
        "projector_layers": {"$ref": "#/$defs/projector_layers"},
        "projector_hidden": {"$ref": "#/$defs/width"},
        "projector_out": {"$ref": "#/$defs/width"},
        "predictor_hidden": {"$ref": "#/$defs/width"},
    }

    def __init__(self, backbone, cfg, num_classes, num_train):
        super().__init__(backbone, cfg, num_classes, num_train)
        out = cfg["projector_out"]
        self.projector = self.make_projector()
        self.predictor = mlp(out, cfg["predictor_hidden"], out)
        self.target = EMATeacher(self.online(), cfg["ema_momentum"])

    def online(self) -> nn.Module:
        return nn.Sequential(self.backbone, self.projector)

    def training_step(self, batch):
        v1, v2 = batch["views"]
        net = self.online()
        p1, p2 = self.predictor(net(v1)), self.predictor(net(v2))
        with torch.no_grad():
            t1, t2 = self.target(v1), self.target(v2)
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return {"loss": loss, "byol": loss.detach()}

    def after_optimizer_step(self, progress):
        self.target.update(self.online(), progress)
