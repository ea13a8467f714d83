"""MoCo v2 (Chen et al., 2020, arXiv 2003.04297): InfoNCE between a query and the key an EMA
key encoder gives for another view of the same image, against a queue of earlier keys.

Follows the paper; settings from solo-learn's CIFAR config (tau 0.2, EMA 0.99 -> 1 with a
cosine schedule, symmetrised over the two views), except the projector's hidden BatchNorm (the
shared `mlp`; solo-learn's is Linear-ReLU-Linear); the Fashion-MNIST presets use tau 0.1, the
winner of round 2 of the equal search (studies/recipe_search). As in solo-learn there is one queue per
view, each starting full of random unit keys: view 1's queries are contrasted with earlier
view-2 keys and view 2's with earlier view-1 keys, then each view's keys join its own queue
(`queue_size` keys per view). Single-device runs
need no shuffle-BN (it hides cross-GPU batch statistics); this is solo-learn's choice too."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from .base import Method, register
from .common import EMATeacher, Queue, info_nce


@register("moco_v2", order=90)
class MoCoV2(Method):
    provenance = (
        "paper: InfoNCE with an EMA key encoder and a key queue; settings from solo-learn's CIFAR config; "
        "in the Fashion-MNIST presets tau 0.1, not 0.2 (round 2 of the equal search)"
    )
    defaults = {
        "temperature": 0.1,
        "queue_size": 4096,
        "ema_momentum": 0.99,
        "projector_layers": 2,
        "projector_hidden": 512,
        "projector_out": 128,
    }
    params_schema = {
        "temperature": {"$ref": "#/$defs/temperature"},
        "queue_size": {"type": "integer", "minimum": 1},
        "ema_momentum": {"$ref": "#/$defs/momentum"},
        "projector_layers": {"$ref": "#/$defs/projector_layers"},
        "projector_hidden": {"$ref": "#/$defs/width"},
        "projector_out": {"$ref": "#/$defs/width"},
    }

    def __init__(self, backbone, cfg, num_classes, num_train):
        super().__init__(backbone, cfg, num_classes, num_train)
        out = cfg["projector_out"]
        self.projector = self.make_projector()
        self.key_encoder = EMATeacher(self.query_encoder(), cfg["ema_momentum"])
        self.queues = nn.ModuleList(Queue(cfg["queue_size"], out) for _ in range(2))  # one per view
        for queue in self.queues:
            queue.push(F.normalize(torch.randn(cfg["queue_size"], out), dim=1))  # random keys at first, as in MoCo

    def query_encoder(self) -> nn.Module:
        return nn.Sequential(self.backbone, self.projector)

    def queries_and_keys(self, views):
        net = self.query_encoder()
        queries = [net(v) for v in views]
        with torch.no_grad():
            keys = [self.key_encoder(v) for v in views]
        return queries, keys

    def contrastive(self, queries, keys) -> torch.Tensor:
        """Symmetrised InfoNCE: each query against the other view's key, with that view's queue
        (as it was before this batch) as negatives; then each view's keys join its queue."""
        (q1, q2), (k1, k2) = queries, keys
        t = self.cfg["temperature"]
        loss = (info_nce(q1, k2, self.queues[1].get(), t) + info_nce(q2, k1, self.queues[0].get(), t)) / 2
        self.queues[0].push(distributed.gather_no_grad(k1))  # the global batch's keys, in rank order
        self.queues[1].push(distributed.gather_no_grad(k2))
        return loss

    def training_step(self, batch):
        loss = self.contrastive(*self.queries_and_keys(batch["views"]))
        return {"loss": loss, "info_nce": loss.detach()}

    def after_optimizer_step(self, progress):
        self.key_encoder.update(self.query_encoder(), progress)
