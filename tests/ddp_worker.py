"""Run by tests/test_distributed.py under torchrun (1 or 2 processes, gloo): a few training steps
of each method on fixed global batches, each process on its slice; rank 0 saves the global loss
and the (DDP-averaged) gradients of every step."""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import yaml

from clusterssl import distributed
from clusterssl.backbones import create_backbone
from clusterssl.methods.base import get_method

GLOBAL_BATCH, STEPS = 16, 3


def batches(method: str):
    g = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        views = [torch.randn(GLOBAL_BATCH, 1, 16, 16, generator=g) for _ in range(2)]
        yield {"views": views, "clean": torch.randn(GLOBAL_BATCH, 1, 16, 16, generator=g),
               "index": torch.arange(GLOBAL_BATCH) + (5 if step == 2 else 0),  # a later step sees other samples too
               "epoch": 0 if (method == "coke" and step == 0) else 1}  # CoKe: its first epoch, then the next


def local(batch: dict) -> dict:
    n = GLOBAL_BATCH // distributed.world_size()
    cut = lambda t: distributed.local_rows(t, n)
    return {"views": [cut(v) for v in batch["views"]], "clean": cut(batch["clean"]), "index": cut(batch["index"]), "epoch": batch["epoch"]}


def main(params_file: str, out: str, methods: list[str]) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    method_params = yaml.safe_load(open(params_file))["method_params"]
    results = {}
    for name in methods:
        cfg = dict(method_params[name], projector_hidden=16, projector_out=8)
        cfg.pop("augment", None), cfg.pop("pretrain", None)
        if name in ("carl",):
            cfg.update(num_prototypes=20, partition_size=10)
        if name in ("moco_v2", "cueco"):
            cfg.update(queue_size=32)
        if name == "cueco":
            cfg.update(num_clusters=4)
        if name == "cadc":
            cfg.update(kmeans_epoch=0)
        if name == "coke":
            cfg.update(num_clusters=[None, 6])
        torch.manual_seed(0)
        backbone = create_backbone({"name": "resnet18", "layers": [1, 1, 1, 1], "channels": [8, 8, 8, 8], "stem": "cifar"}, in_chans=1)
        model = get_method(name)(backbone, cfg, num_classes=4, num_train=GLOBAL_BATCH + 5)
        if name == "cadc":  # as if its k-means had placed them
            model.centres.data.normal_()
        if distributed.active():
            model = distributed.sync_batchnorm(model)
            step = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True, broadcast_buffers=False)
        else:
            step = model.training_step
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        torch.manual_seed(0)  # the methods' own draws (CARL's blocks, CueCo's first centroids) agree
        losses, grads = [], []
        for i, batch in enumerate(batches(name)):
            if name == "coke" and i == 1:
                model.on_epoch_end(0)
            terms = step(local(batch))
            opt.zero_grad()
            terms["loss"].backward()
            loss = terms["loss"].detach().clone()
            if distributed.active():
                dist.all_reduce(loss)
                loss /= distributed.world_size()
            losses.append(float(loss))
            grads.append({k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None})
            opt.step()
            model.after_optimizer_step((i + 1) / STEPS)
        results[name] = {"loss": losses, "grads": grads}
    if distributed.rank() == 0:
        torch.save(results, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3].split(","))
