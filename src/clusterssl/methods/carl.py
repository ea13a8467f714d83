"""CARL — Consistent Assignment for Representation Learning (Silva & Ramirez Rivera, SAC 2022,
arXiv 2112.15421).

K learnable prototypes (a bias-free, weight-normalised linear layer on the L2-normalised
projection) act as anchors; each view's assignment p = softmax(W z / tau) must agree with the
other view's assignment q, used as a target without gradient.

What follows the paper / authors' code, and what is assumed (METHODS.md):
- [paper] learned prototypes, no Sinkhorn / k-means / offline clustering;
- [code]  consistency loss L_cons = -(1/N) sum_i log(p_i . q_i), symmetrised over view pairs;
- [assumed] collapse prevention L_H = KL(mean_i p_i || uniform), weight `entropy_weight`,
  on the batch-mean assignment of the student views and the (detached) target views together,
  as in the authors' follow-up CARP's code;
- [assumed] the projection is L2-normalised before the prototypes (so logits are cosine
  similarities and the temperatures act on a bounded scale); CARP's head does not normalise;
- [assumed] the target q comes from an EMA teacher (`target: ema`, momentum cosine to 1) or a
  stop-gradient copy of the online branch (`target: stopgrad`);
- [assumed] K, temperatures and projector size are preset choices, not the paper's;
- [code, CARP] optional random partitions (`partition_size`): each step the K prototypes are
  shuffled into blocks of that size and both terms are computed within each block (softmax over
  the block) and averaged over blocks — the authors' follow-up's way of making large K train
  stably; `partition_size: null` is plain CARL (one block of K).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..augment import ViewSpec
from .base import Method, register
from .common import EMATeacher, kl_to_uniform, mlp


def consistency_loss(student_logp: torch.Tensor, target_logp: torch.Tensor) -> torch.Tensor:
    """-(1/N) sum_i log(p_i . q_i) from the log-probabilities of the student p and the target q;
    q is detached (no gradient flows into the target). Exact in log space, with no clamp:
    log(p.q) = logsumexp(log p + log q), finite however confident either side is.
    Assignments are over the last dimension; any dimensions between the batch and it (blocks
    of a random partition) are averaged over."""
    return -torch.logsumexp(student_logp + target_logp.detach(), dim=-1).mean()


entropy_regulariser = kl_to_uniform  # CARL's collapse regulariser, shared with CC


def partition(logits: torch.Tensor, blocks: torch.Tensor | None) -> torch.Tensor:
    """(N, K) similarities -> (N, G, B) grouped by `blocks` (G x B prototype indices), or
    unchanged when `blocks` is None."""
    return logits if blocks is None else logits[:, blocks]


def carl_loss(student_logits: list[torch.Tensor], target_logps: list[torch.Tensor], temperature: float, entropy_weight: float) -> dict[str, torch.Tensor]:
    """CARL loss over V views: consistency between every ordered pair of different views
    (student view i against target view j), plus the collapse regulariser on the batch-mean
    assignment of all student views and all (detached) target views, as CARP computes it.
    `student_logits` are prototype similarities (before the temperature), shape (N, K) or,
    partitioned, (N, G, B); `target_logps` are the targets' log-probabilities, same shapes."""
    logps = [F.log_softmax(s / temperature, dim=-1) for s in student_logits]
    pairs = [(i, j) for i in range(len(logps)) for j in range(len(target_logps)) if i != j]
    cons = sum(consistency_loss(logps[i], target_logps[j]) for i, j in pairs) / len(pairs)
    ent = entropy_regulariser(torch.cat([lp.exp() for lp in logps] + [t.detach().exp() for t in target_logps]))
    return {"loss": cons + entropy_weight * ent, "consistency": cons.detach(), "entropy_kl": ent.detach()}


class PrototypeHead(nn.Module):
    """Projector, then cosine similarity to K weight-normalised prototypes."""

    def __init__(self, feat_dim: int, hidden: int, out: int, num_prototypes: int, layers: int = 2):
        super().__init__()
        self.projector = mlp(feat_dim, hidden, out, layers=layers)
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(out, num_prototypes, bias=False))
        # unit-norm rows: logits are cosine similarities
        self.prototypes.parametrizations.weight.original0.data.fill_(1.0)
        self.prototypes.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.projector(h), dim=1))


class _Net(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.head(self.backbone(x))


@register("carl", order=10)
class CARL(Method):
    view_spec = ViewSpec(global_views=2, local_views=-1)  # multi-crop: as many local views as augment.local_crops
    provenance = (
        "paper: learned prototypes; code: L_cons = -log(p.q), exact in log space; assumed (from CARP): "
        "KL-to-uniform on student and target views; assumed: its weight, EMA/stop-grad target, "
        "L2-normalised projection, K and temperatures"
    )
    defaults = {
        "num_prototypes": 1000,
        "partition_size": 100,
        "temperature": 0.1,
        "target_temperature": 0.03,
        "entropy_weight": 3.0,
        "target": "stopgrad",
        "ema_momentum": 0.99,
        "eval_teacher": False,
        "projector_layers": 2,
        "projector_hidden": 512,
        "projector_out": 128,
    }
    params_schema = {
        "num_prototypes": {"type": "integer", "minimum": 2},
        "partition_size": {"type": ["integer", "null"], "minimum": 2, "description": "CARP random partitions: prototypes per block (null: one block of all K)"},
        "temperature": {"type": "number", "exclusiveMinimum": 0},
        "target_temperature": {"type": "number", "exclusiveMinimum": 0},
        "entropy_weight": {"type": "number", "minimum": 0},
        "target": {"enum": ["ema", "stopgrad"]},
        "ema_momentum": {"type": "number", "minimum": 0, "maximum": 1},
        "eval_teacher": {"type": "boolean", "description": "evaluate the EMA teacher's backbone instead of the online one"},
        "projector_layers": {"$ref": "#/$defs/projector_layers"},
        "projector_hidden": {"$ref": "#/$defs/width"},
        "projector_out": {"$ref": "#/$defs/width"},
    }

    def __init__(self, backbone, cfg, num_classes, num_train):
        super().__init__(backbone, cfg, num_classes, num_train)
        self.head = PrototypeHead(self.feat_dim, cfg["projector_hidden"], cfg["projector_out"], cfg["num_prototypes"], cfg["projector_layers"])
        self.teacher = EMATeacher(_Net(self.backbone, self.head), cfg["ema_momentum"]) if cfg["target"] == "ema" else None

    def random_blocks(self, device) -> torch.Tensor | None:
        size = self.cfg.get("partition_size")
        k = self.cfg["num_prototypes"]
        if not size or size >= k:
            return None
        return torch.randperm(k, device=device)[: (k // size) * size].view(k // size, size)

    def training_step(self, batch):
        views = batch["views"]
        blocks = self.random_blocks(views[0].device)
        logits = [self.head(self.backbone(v)) for v in views]
        self.record_assignments(logits[0].argmax(dim=1), logits[0].shape[1])
        student = [partition(s, blocks) for s in logits]
        with torch.no_grad():
            t = self.cfg["target_temperature"]
            if self.teacher is not None:
                targets = [F.log_softmax(partition(self.teacher(v), blocks) / t, dim=-1) for v in views]
            else:
                targets = [F.log_softmax(s.detach() / t, dim=-1) for s in student]
        local = [partition(self.head(self.backbone(v)), blocks) for v in batch.get("local_views", [])]
        return carl_loss(student + local, targets, self.cfg["temperature"], self.cfg["entropy_weight"])

    def after_optimizer_step(self, progress):
        if self.teacher is not None:
            self.teacher.update(_Net(self.backbone, self.head), progress)

    def cluster_logits(self, features):
        """Each image's nearest prototype (K clusters, usually many more than classes)."""
        return self.head(features)

    def eval_encoder(self):
        if self.teacher is not None and self.cfg.get("eval_teacher", False):
            return self.teacher.module.backbone
        return self.backbone
