"""Barlow Twins (Zbontar et al., 2021): two views' cross-correlation matrix is pushed towards the identity."""
from clusterssl.methods.base import Method, register


def barlow_twins_loss(z1, z2, off_diagonal_weight: float):
    z1, z2 = ((z - z.mean(0)) / (z.std(0) + 1e-6) for z in (z1, z2))
    c = z1.T @ z2 / len(z1)  # one process's batch: with several, gather the projections first
    on = (c.diagonal() - 1).pow(2).sum()
    return on + off_diagonal_weight * (c.pow(2).sum() - c.diagonal().pow(2).sum())


@register("barlow_twins")
class BarlowTwins(Method):
    provenance = "paper: redundancy reduction between two views; plugin example, settings not tuned"
    defaults = {"off_diagonal_weight": 0.005, "projector_layers": 2, "projector_hidden": 512, "projector_out": 128}
    params_schema = {"off_diagonal_weight": {"type": "number", "minimum": 0}, "projector_layers": {"$ref": "#/$defs/projector_layers"},
                     "projector_hidden": {"$ref": "#/$defs/width"}, "projector_out": {"$ref": "#/$defs/width"}}

    def __init__(self, backbone, cfg, num_classes, num_train):
        super().__init__(backbone, cfg, num_classes, num_train)
        self.projector = self.make_projector()

    def training_step(self, batch):
        z1, z2 = (self.projector(self.backbone(v)) for v in batch["views"])
        loss = barlow_twins_loss(z1, z2, self.cfg["off_diagonal_weight"])
        return {"loss": loss, "barlow_twins": loss.detach()}
