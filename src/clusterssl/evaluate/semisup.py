"""Semi-supervised evaluation: fine-tune a backbone plus a new linear head on a class-balanced
labelled subset of the train split (1 % or 10 %), then score top-1 on the test split.

The recipe is the same for every encoder and fixed in `eval.semisup`: SGD with Nesterov
momentum 0.9 and cosine decay over a fixed number of steps, random resized crop + flip, batch
norm in training mode. The only choice, the learning rate (from the `lr` list; the head's is
`head_lr_scale` times it), is made per encoder on a seeded, held-out `val_fraction` of the
labelled subset, then the encoder is fine-tuned again on the whole subset with that rate:
no test image or label reaches any choice. Rows:
- a pretrained method: its evaluation encoder, from its checkpoint;
- `scratch`: the same backbone, randomly initialised (what pretraining must beat);
- `raw_pixels`: the linear probe on the subset's pixels, for as many steps as fine-tuning."""
from __future__ import annotations

import copy
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import paths
from ..augment import normalise, random_resized_crop
from ..data import load_meta, load_prepared
from ..data.splits import load_split
from ..io import file_sha256, write_json
from .features import raw_features
from .protocols import held_out_split, select_and_probe

CROP_RATIO = (3 / 4, 4 / 3)


def finetune(backbone: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, mean, std, cfg: dict, lr: float, seed: int, amp: bool,
             memory_format: torch.memory_format | None = None) -> nn.Module:
    """Backbone + new linear head trained with cross-entropy on uint8 NCHW `images` (on the
    training device), weights and batches in `memory_format` where one is given (pretraining's:
    `pretrain.channels_last`). `backbone` is modified in place: pass a copy."""
    device = images.device
    torch.manual_seed(seed)
    head = nn.Linear(backbone.num_features, num_classes)
    backbone.requires_grad_(True)  # an EMA teacher's copy arrives frozen
    model = nn.Sequential(backbone, head).to(device).train()
    if memory_format is not None:  # the layout pretraining trains in (pretrain.channels_last), for its faster convolutions
        model = model.to(memory_format=memory_format)
    groups = [{"params": list(backbone.parameters()), "lr": lr}, {"params": list(head.parameters()), "lr": lr * cfg["head_lr_scale"]}]
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["steps"])
    gen = torch.Generator(device=device).manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    batch = min(cfg["batch_size"], len(images))
    size = images.shape[-1]
    queue = torch.empty(0, dtype=torch.long)
    for _ in range(cfg["steps"]):
        if len(queue) < batch:  # epochs of shuffled indices, as long as the steps need
            queue = torch.cat([queue, torch.randperm(len(images), generator=order)])
        idx, queue = queue[:batch].to(device), queue[batch:]
        x = random_resized_crop(images[idx].float().div_(255), size, tuple(cfg["crop_scale"]), CROP_RATIO, cfg["flip"], gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(normalise(x, mean, std, memory_format)).float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std, batch_size: int,
             memory_format: torch.memory_format | None = None) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = normalise(images[i : i + batch_size].float().div(255), mean, std, memory_format)
        correct += int((model(x).argmax(1) == labels[i : i + batch_size]).sum())
    return correct / max(1, len(images))


def select_and_finetune(backbone: nn.Module, train_x, train_y, test_x, test_y, num_classes: int, mean, std, cfg: dict, seed: int, amp: bool, eval_batch: int,
                        memory_format: torch.memory_format | None = None) -> dict:
    """Choose the learning rate on a held-out part of the labelled subset, refit on all of it,
    score on test (the test tensors are used only for that last score)."""
    val_top1 = {}
    tune = lambda x, y, lr: finetune(copy.deepcopy(backbone), x, y, num_classes, mean, std, cfg, lr, seed, amp, memory_format)
    score = lambda m, x, y: accuracy(m, x, y, mean, std, eval_batch, memory_format)
    if len(cfg["lr"]) > 1:
        val, fit = (torch.from_numpy(i).to(train_x.device) for i in held_out_split(len(train_x), cfg["val_fraction"], seed))
        for lr in cfg["lr"]:
            val_top1[lr] = score(tune(train_x[fit], train_y[fit], lr), train_x[val], train_y[val])
    best = max(cfg["lr"], key=lambda lr: val_top1.get(lr, 0.0))
    model = tune(train_x, train_y, best)
    return {
        "top1": score(model, test_x, test_y),
        "train_top1": score(model, train_x, train_y),
        "lr": best,
        "val_top1": {str(k): v for k, v in val_top1.items()},
    }


def semisup(params: dict, method: str, seed: int, fraction: float, threads: int | None = None) -> Path:
    from ..backbones import create_backbone  # imported here: timm is slow to import
    from ..runtime import bf16_autocast, load_trained, precision_name, use_device

    if threads:
        torch.set_num_threads(threads)
    cfg = params["eval"]["semisup"]
    dataset = params["dataset"]
    prepared = paths.prepared_dir(params, dataset)
    train, test = load_prepared(prepared, "train"), load_prepared(prepared, "test")
    subset = load_split(paths.split_file(params, dataset, fraction, seed), len(train))
    num_classes = len(load_meta(prepared)["classes"])  # load_prepared checked every label against it
    t0 = time.time()
    made_by = method  # the baselines start from no checkpoint: raw_pixels, scratch
    if method == paths.RAW_PIXELS:
        lin = params["eval"]["linear"]
        # the same number of optimiser steps as fine-tuning: a few epochs of a tiny subset underfit
        epochs = max(1, math.ceil(cfg["steps"] / max(1, len(subset) // lin["batch_size"])))
        result = select_and_probe(raw_features(train, subset), train.labels[subset], raw_features(test), test.labels,
                                  epochs, lin["lr"], lin["weight_decay"], lin["batch_size"], seed, lin["val_fraction"])
        settings = {"linear": lin, "epochs": epochs}
    else:
        device = use_device(params["pretrain"]["device"])
        amp = bf16_autocast(params["pretrain"], device)
        as_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous().to(device)
        train_x, test_x = as_tensor(train.take(subset)), as_tensor(test.take(np.arange(len(test))))
        train_y, test_y = torch.from_numpy(train.labels[subset]).to(device), torch.from_numpy(test.labels).to(device)
        if method == paths.SCRATCH:
            torch.manual_seed(seed)
            backbone = create_backbone(params["backbone"], train_x.shape[1])
            if train.streamed:  # normalised like pretraining: train-set statistics
                mean, std = (torch.tensor(v, device=device) for v in (train.pixel_mean, train.pixel_std))
            else:
                full = torch.from_numpy(train.images).float() / 255
                mean, std = full.mean(dim=(0, 1, 2)).to(device), full.std(dim=(0, 1, 2)).to(device)
        else:
            model, state = load_trained(params, method, seed, device)
            backbone, mean, std = model.eval_encoder(), state["mean"].to(device), state["std"].to(device)
            made_by = file_sha256(paths.run_files(params, method, seed)[0])
        fmt = torch.channels_last if params["pretrain"]["channels_last"] else torch.contiguous_format
        result = select_and_finetune(backbone.to(device), train_x, train_y, test_x, test_y, num_classes, mean, std, cfg, seed, amp,
                                     params["eval"]["batch_size"], memory_format=fmt)
        settings = {**cfg, "autocast": precision_name(amp)}  # pretrain.amp as resolved on this machine
    out = paths.metrics_file(params, method, seed, paths.semisup_name(fraction))
    write_json(out, {
        "dataset": dataset, "pretrained_on": dataset, "method": method, "seed": seed, "protocol": "semisup", "fraction": fraction,
        "evaluation": paths.semisup_name(fraction), "checkpoint_sha256": made_by,
        "settings": settings, "num_train": int(len(subset)), "num_test": int(len(test)),
        "subset_sha256": hashlib.sha256(np.ascontiguousarray(subset, dtype=np.int64).tobytes()).hexdigest(),
        "seconds": round(time.time() - t0, 2), "metrics": result,
    })
    return out
