"""CADC — Cluster Analysis with Deep Embeddings and Contrastive Learning (arXiv 2109.12714).

Three views per image: the clean (un-augmented) image x and two augmented views.
- Instance loss: NT-Xent between the two augmented views' projections (tau 0.5 as in CC's
  code; the Fashion-MNIST presets use 0.2, the winner of round 2 of the equal search,
  studies/recipe_search).
- Learnable centres mu (K x dim(h)) in backbone-feature space, placed by k-means on the
  backbone's features of the training set (the paper: the untrained backbone's); soft
  assignment by a Student-t kernel (DEC): q_ik ~ (1 + ||h_i - mu_k||^2)^-1.
- Clustering loss: KL(P || Q) on the clean view, with the detached, sharpened DEC target
  p_ik ~ q_ik^2 / f_k (f_k = sum_i q_ik).
- Anchor loss: KL(q(x) || q(x_aug)) for both augmented views, q(x) detached.
L = L_ins + w (L_clu + L_anchor), w = `cluster_weight`.

[code] as listed above with w = 1 and the centres placed before the first step; K = number of
classes and the cluster of an image is argmax_k q_ik.
[assumed] the projector size (scaled down), the k-means initialisation's n_init (3), the
centres' exemption from weight decay, w = 0.1, and when k-means places the centres
(`kmeans_epoch`, 2 in the presets: the instance loss trains alone until then). On the untrained
backbone, the paper's start, the features are tightly bunched and then spread out about 5x, so
the Student-t assignment goes nearly uniform: with w = 1 the terms then lock the features into
4-5 of 10 clusters, with w = 0.1 they stay near zero for all 10 epochs and the head is weak (ACC
0.37). Centres from k-means after two epochs keep the terms active and all 10 clusters in use
(studies/default_preset, "CADC")."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..augment import ViewSpec
from ..io import UserError
from .. import distributed
from .base import Method, register
from .common import nt_xent


def student_t_assignment(h: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """DEC soft assignment q_ik = (1 + ||h_i - mu_k||^2)^-1, normalised over k."""
    q = 1.0 / (1.0 + torch.cdist(h, centres).pow(2))
    return q / q.sum(dim=1, keepdim=True)


def dec_target(q: torch.Tensor) -> torch.Tensor:
    """DEC's sharpened target p_ik = (q_ik^2 / f_k) / sum_k' (q_ik'^2 / f_k'), f_k = sum_i q_ik;
    detached."""
    q = q.detach()
    w = q.pow(2) / distributed.all_reduce_sum(q.sum(dim=0))  # cluster frequencies over the global batch
    return w / w.sum(dim=1, keepdim=True)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over clusters, averaged over the batch."""
    return (p * (torch.log(p.clamp_min(1e-12)) - torch.log(q.clamp_min(1e-12)))).sum(dim=1).mean()


def cadc_loss(q_clean: torch.Tensor, q_augs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clustering loss KL(P || Q_clean) and anchor loss sum_v KL(sg(Q_clean) || Q_aug_v)."""
    clu = kl(dec_target(q_clean), q_clean)
    anchor = sum(kl(q_clean.detach(), q) for q in q_augs)
    return {"clustering": clu, "anchor": anchor}


@register("cadc", order=50)
class CADC(Method):
    view_spec = ViewSpec(global_views=2, clean=True)
    provenance = (
        "code: NT-Xent on two views + DEC clustering KL on the clean view + anchor KL, centres from k-means "
        "on the backbone's features; assumed: projector size, k-means n_init, no weight decay on the centres, "
        "clustering + anchor weight 0.1 (paper: 1), k-means after 2 epochs of the instance loss alone "
        "(paper: on the untrained backbone); SGD, the shared recipe (Adam as in CC's code lost the equal search, "
        "studies/recipe_search); in the Fashion-MNIST presets instance tau 0.2, not 0.5 (round 2 of the equal search)"
    )
    defaults = {
        "temperature": 0.2,
        "num_clusters": None,
        "cluster_weight": 0.1,
        "kmeans_epoch": 2,
        "projector_layers": 2,
        "projector_hidden": 512,
        "projector_out": 128,
    }
    params_schema = {
        "temperature": {"$ref": "#/$defs/temperature"},
        "num_clusters": {"$ref": "#/$defs/clusters"},
        "cluster_weight": {"type": "number", "minimum": 0, "description": "weight of the clustering + anchor losses (the paper's is 1)"},
        "kmeans_epoch": {"type": "integer", "minimum": 0, "description": "epoch (0-based) at whose start k-means on the backbone's features places the centres; before it the instance loss trains alone (the paper's is 0: the untrained backbone); must be below pretrain.epochs"},
        "projector_layers": {"$ref": "#/$defs/projector_layers"},
        "projector_hidden": {"$ref": "#/$defs/width"},
        "projector_out": {"$ref": "#/$defs/width"},
    }

    def __init__(self, backbone, cfg, num_classes, num_train):
        super().__init__(backbone, cfg, num_classes, num_train)
        self.projector = self.make_projector()
        self.centres = nn.Parameter(torch.zeros(cfg["num_clusters"] or num_classes, self.feat_dim))

    def check_schedule(self, epochs):
        if self.cfg["kmeans_epoch"] >= epochs:
            raise UserError(
                f"method_params.cadc.kmeans_epoch is {self.cfg['kmeans_epoch']} but pretrain.epochs is {epochs}: "
                "the centres would never be placed; set kmeans_epoch below pretrain.epochs (0: the paper's "
                "k-means on the untrained backbone)"
            )

    def on_epoch_start(self, epoch, encode_train_set):
        if epoch != self.cfg["kmeans_epoch"]:
            return
        from sklearn.cluster import KMeans

        feats = encode_train_set().float().cpu().numpy()
        km = KMeans(len(self.centres), n_init=3, random_state=0).fit(feats)
        with torch.no_grad():
            self.centres.copy_(torch.from_numpy(km.cluster_centers_.astype(np.float32)))

    def parameter_groups(self) -> list[dict]:
        # the centres are cluster means, not weights: decay would pull unused ones toward the origin
        decay, no_decay = super().parameter_groups()
        decay["params"] = [p for p in decay["params"] if p is not self.centres]
        no_decay["params"].append(self.centres)
        return [decay, no_decay]

    def training_step(self, batch):
        clustering = batch["epoch"] >= self.cfg["kmeans_epoch"]  # before it there are no centres
        h_clean = self.backbone(batch["clean"]) if clustering else None
        h1, h2 = (self.backbone(v) for v in batch["views"])
        ins = nt_xent(self.projector(h1), self.projector(h2), self.cfg["temperature"])
        if not clustering:  # the instance loss alone
            zero = torch.zeros((), device=ins.device)
            return {"loss": ins, "instance": ins.detach(), "clustering": zero, "anchor": zero}
        q = [student_t_assignment(h.float(), self.centres) for h in (h_clean, h1, h2)]
        terms = cadc_loss(q[0], q[1:])
        loss = ins + self.cfg["cluster_weight"] * (terms["clustering"] + terms["anchor"])
        return {"loss": loss, "instance": ins.detach(), **{k: v.detach() for k, v in terms.items()}}

    def cluster_logits(self, features):
        return torch.log(student_t_assignment(features.float(), self.centres))
