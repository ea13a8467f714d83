"""The interface every method implements, and the registry that maps a params name to a class.

The training loop only ever calls the hooks below, so a new method (EMA teachers, key queues,
per-sample dataset indices, an extra clean view, multi-crop, cluster heads) is one new file in
this folder, or a module of your own package (clusterssl/registry.py says how it is found):

    @register("mymethod")
    class MyMethod(Method):
        provenance = "..."; defaults = {...}; params_schema = {...}   # literals: registry.py
        view_spec = ViewSpec(global_views=2)
        def training_step(self, batch): ...   # returns {"loss": total, "<term>": value, ...}

`batch` holds `views` (list of augmented views, normalised), optionally `local_views`,
`clean` (the un-augmented image, when `view_spec.clean`), and always `index` (each sample's
position in the training set, for per-instance buffers such as CoKe's pseudo-labels) and
`epoch` (0-based, for schedules such as SwAV's frozen prototypes)."""
from __future__ import annotations

import importlib

import torch
import torch.nn as nn

from .. import distributed, registry
from ..augment import ViewSpec

REGISTRY: dict[str, type["Method"]] = {}


def register(name: str, order: int = registry.PLUGIN_ORDER):
    """Register a Method class under `name`; `order` places it in `methods: all` and the report
    (read from the source by clusterssl.registry, which lists the methods without importing them)."""

    def deco(cls):
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def get_method(name: str) -> type["Method"]:
    """The class registered as `name`, importing the module that declares it."""
    importlib.import_module(registry.method(name).module)  # importing registers it
    return REGISTRY[name]


class Method(nn.Module):
    name = ""
    view_spec = ViewSpec()
    #: one line each for the report: what follows the authors and what is assumed
    provenance = ""

    def __init__(self, backbone: nn.Module, cfg: dict, num_classes: int, num_train: int):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.num_classes = num_classes
        self.num_train = num_train  # size of the training set: per-instance buffers index into it
        self.feat_dim = backbone.num_features

    def make_projector(self, **kwargs) -> nn.Module:
        """The projector MLP from the method's `projector_{layers,hidden,out}` params."""
        from .common import mlp

        c = self.cfg
        return mlp(self.feat_dim, c["projector_hidden"], c["projector_out"], layers=c["projector_layers"], **kwargs)

    # --- hooks called by the training loop -------------------------------------------------
    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """The training step: what DistributedDataParallel calls (it syncs gradients around forward)."""
        return self.training_step(batch)

    def check_schedule(self, epochs: int) -> None:
        """Raise UserError, before anything is written, if the method's params cannot take
        effect within `epochs` epochs (e.g. CADC's centres placed after the last epoch)."""

    def on_epoch_start(self, epoch: int, encode_train_set) -> None:
        """Called before each epoch (0-based), also when a run resumes; `encode_train_set()`
        returns the current backbone's features of the un-augmented training set (for methods
        initialised from data, e.g. CADC's k-means centres)."""

    def after_optimizer_step(self, progress: float) -> None:
        """Called after every optimiser step; `progress` runs from 0 to 1 over training (EMA)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after every epoch (per-epoch buffers, e.g. CoKe's centres)."""

    def parameter_groups(self) -> list[dict]:
        """Parameter groups for the optimiser; biases and norm weights skip weight decay / LARS."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]

    # --- prototype use, for the report (methods with prototypes or clusters call this) ------------
    def record_assignments(self, assigned: torch.Tensor, k: int) -> None:
        """Count the prototypes (of `k`) that this step's samples are assigned to. A plain
        attribute, not a buffer: it is a monitor, never part of the model's state."""
        usage = getattr(self, "usage_counts", None)
        if usage is None or len(usage) != k:
            usage = torch.zeros(k, dtype=torch.long, device=assigned.device)
        self.usage_counts = usage + torch.bincount(assigned.detach().flatten(), minlength=k)

    def take_usage(self) -> dict:
        """This epoch's prototype use ({} for methods without prototypes), then reset: how many
        prototypes received at least one sample, and the entropy of their use over log K (1: even)."""
        usage, self.usage_counts = getattr(self, "usage_counts", None), None
        if usage is not None:
            usage = distributed.sum_no_grad(usage)  # every process's samples
        if usage is None or usage.sum() == 0:
            return {}
        p = usage.double() / usage.sum()
        entropy = -(p[p > 0] * p[p > 0].log()).sum() / torch.log(torch.tensor(float(len(p)), dtype=torch.float64))
        return {"prototypes": len(p), "prototypes_used": int((usage > 0).sum()), "prototype_entropy": round(float(entropy), 4)}

    # --- evaluation ----------------------------------------------------------------------------
    def eval_encoder(self) -> nn.Module:
        """The frozen encoder the evaluations use (the online backbone by default)."""
        return self.backbone

    def cluster_logits(self, features: torch.Tensor) -> torch.Tensor | None:
        """The method's own cluster assignment logits from backbone features, if it has a head."""
        return None
