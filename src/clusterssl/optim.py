"""Optimisers and the learning-rate schedule of pretraining: SGD / LARS / Adam / AdamW over a
method's parameter groups, linear warm-up then cosine decay, set per step."""
from __future__ import annotations

import math

import torch

from .methods.base import Method


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017); parameter
    groups marked `lars_exclude` (biases, norms) get plain SGD, as in SimCLR/BYOL."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=g["weight_decay"]) if g["weight_decay"] else p.grad.clone()
                if not g["lars_exclude"]:
                    pn, dn = torch.norm(p), torch.norm(d)
                    d.mul_(torch.where((pn > 0) & (dn > 0), g["eta"] * pn / dn, torch.ones_like(pn)))
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])


def make_optimizer(method: Method, cfg: dict, lr: float) -> torch.optim.Optimizer:
    groups = method.parameter_groups()
    wd = cfg["weight_decay"]
    for g in groups:
        g.setdefault("weight_decay", wd)
    name = cfg["optimizer"]
    if name == "lars":
        return LARS(groups, lr=lr, momentum=cfg["momentum"], weight_decay=wd)
    for g in groups:
        g.pop("lars_exclude", None)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"], weight_decay=wd)
    if name == "adam":  # CC's and CADC's code: Adam, weight decay as an L2 term in the gradient
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)


def lr_at(step: int, total: int, warmup: int, base: float, final_ratio: float = 0.0) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from `base` to `final_ratio * base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def set_lr(opt: torch.optim.Optimizer, step: int, total: int, warmup: int, base: float) -> float:
    """Sets every parameter group's rate to the schedule's rate at `step`, and returns it."""
    lr = lr_at(step, total, warmup, base)
    for g in opt.param_groups:
        g["lr"] = lr
    return lr
