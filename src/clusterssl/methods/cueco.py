"""CueCo-style cluster contrast (after Giakoumoglou & Stathaki, 2025, arXiv 2507.12359).

[paper] A query network and a key network updated as an EMA of the query network; a
contrastive loss pushes different images apart and a clustering objective pulls features of
the same cluster together.
[assumed] No code is public, so everything below the idea is this project's choice, and the
method is called "CueCo-style" everywhere:
- the contrastive part is MoCo v2 exactly (`moco_v2.py`: InfoNCE, key queue, EMA key encoder);
- `num_clusters` centroids live on the unit sphere in projection space. Each key is assigned
  to its nearest centroid; the cluster term is a cross-entropy that pulls the query of the
  other view toward that centroid (softmax over centroids, `cluster_temperature`);
- centroids follow the mean of the keys assigned to them: c <- normalise(m c + (1 - m) mean),
  m = `centroid_momentum`; they start as the first batch's keys;
- L = L_InfoNCE + `cluster_weight` * L_cluster."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed
from .base import register
from .common import per_cluster_sums
from .moco_v2 import MoCoV2


def cluster_pull_loss(query: torch.Tensor, centroids: torch.Tensor, assignment: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the query's softmax over (detached, unit) centroids against the cluster
    its key was assigned to."""
    logits = F.normalize(query, dim=1) @ F.normalize(centroids.detach(), dim=1).t() / temperature
    return F.cross_entropy(logits, assignment)


@torch.no_grad()
def update_centroids(centroids: torch.Tensor, keys: torch.Tensor, assignment: torch.Tensor, momentum: float) -> None:
    """In place: each centroid with assigned keys moves toward their mean, then is renormalised."""
    counts, sums = per_cluster_sums(keys.to(centroids.dtype), assignment, len(centroids))
    used = counts > 0
    means = sums[used] / counts[used, None]
    centroids[used] = F.normalize(momentum * centroids[used] + (1 - momentum) * means, dim=1)


@register("cueco", order=30)
class CueCo(MoCoV2):
    provenance = (
        "CueCo-style: paper gives the idea only (EMA key network, contrast + cluster pull); assumed: "
        "MoCo v2 InfoNCE + cross-entropy to EMA centroids of the key's cluster, K and weights"
    )
    defaults = {
        "temperature": 0.1,
        "queue_size": 4096,
        "ema_momentum": 0.99,
        "projector_layers": 2,
        "projector_hidden": 512,
        "projector_out": 128,
        "num_clusters": 100,
        "cluster_temperature": 0.2,
        "centroid_momentum": 0.99,
        "cluster_weight": 0.3,
    }
    params_schema = {
        "temperature": {"$ref": "#/$defs/temperature"},
        "queue_size": {"type": "integer", "minimum": 1},
        "ema_momentum": {"$ref": "#/$defs/momentum"},
        "projector_layers": {"$ref": "#/$defs/projector_layers"},
        "projector_hidden": {"$ref": "#/$defs/width"},
        "projector_out": {"$ref": "#/$defs/width"},
        "num_clusters": {"type": "integer", "minimum": 2},
        "cluster_temperature": {"$ref": "#/$defs/temperature"},
        "centroid_momentum": {"type": "number", "minimum": 0, "maximum": 1},
        "cluster_weight": {"type": "number", "minimum": 0},
    }

    def __init__(self, backbone, cfg, num_classes, num_train):
        super().__init__(backbone, cfg, num_classes, num_train)
        self.register_buffer("centroids", torch.zeros(cfg["num_clusters"], cfg["projector_out"]))
        self.register_buffer("centroids_ready", torch.zeros((), dtype=torch.bool))

    def training_step(self, batch):
        queries, keys = self.queries_and_keys(batch["views"])
        k_all = F.normalize(torch.cat([distributed.gather_no_grad(k) for k in keys]), dim=1)  # the global batch's
        if not self.centroids_ready:
            # first step: centroids are random keys of this batch (repeated when K > 2N)
            pick = torch.randperm(len(k_all), device=k_all.device).repeat(-(-len(self.centroids) // len(k_all)))
            self.centroids.copy_(k_all[pick[: len(self.centroids)]])
            self.centroids_ready.fill_(True)
        with torch.no_grad():
            assign = [(F.normalize(k, dim=1) @ self.centroids.t()).argmax(dim=1) for k in keys]
            assign_all = torch.cat([distributed.gather_no_grad(a) for a in assign])
        t = self.cfg["cluster_temperature"]
        clu = (cluster_pull_loss(queries[0], self.centroids, assign[1], t) + cluster_pull_loss(queries[1], self.centroids, assign[0], t)) / 2
        con = self.contrastive(queries, keys)
        update_centroids(self.centroids, k_all, assign_all, self.cfg["centroid_momentum"])
        return {"loss": con + self.cfg["cluster_weight"] * clu, "info_nce": con.detach(), "cluster": clu.detach()}
