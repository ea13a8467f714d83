"""Pieces shared by several methods: projector MLP, EMA teacher, NT-Xent, InfoNCE with a key
queue, KL-to-uniform, Sinkhorn, queue."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed


def mlp(in_dim: int, hidden: int, out: int, layers: int = 2, last_bn: bool = False, bn: bool = True) -> nn.Sequential:
    """Projector / predictor MLP: (Linear-BN-ReLU) x (layers-1), then Linear (optionally BN).
    `bn=False` drops the hidden BatchNorms (Contrastive Clustering's heads have none)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=not bn), *([nn.BatchNorm1d(hidden)] if bn else []), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mods)


def ema_momentum(base: float, progress: float, final: float = 1.0) -> float:
    """Cosine schedule from `base` (progress 0) to `final` (progress 1), as in BYOL."""
    return final - (final - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


class EMATeacher(nn.Module):
    """A frozen copy of `student` updated as theta_t <- m theta_t + (1 - m) theta_s."""

    def __init__(self, student: nn.Module, base_momentum: float, final_momentum: float = 1.0):
        super().__init__()
        self.module = copy.deepcopy(student)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.base_momentum, self.final_momentum = base_momentum, final_momentum

    @torch.no_grad()
    def update(self, student: nn.Module, progress: float) -> float:
        m = ema_momentum(self.base_momentum, progress, self.final_momentum)
        t_params = [p for p in self.module.parameters()]
        s_params = [p.detach() for p in student.parameters()]
        torch._foreach_mul_(t_params, m)
        torch._foreach_add_(t_params, s_params, alpha=1 - m)
        for tb, sb in zip(self.module.buffers(), student.buffers()):
            tb.copy_(sb)  # BN running stats follow the student
        return m

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, across_processes: bool = True) -> torch.Tensor:
    """NT-Xent (SimCLR) over the 2N views: each view's positive is the other view of the same
    image, the other 2N - 2 views are negatives. Inputs need not be normalised. Across
    processes, this process's views are the queries and the global batch's the keys;
    `across_processes=False` for inputs that are already global (CC's cluster columns)."""
    q = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    gathered = across_processes and distributed.active()
    k = F.normalize(torch.cat([distributed.gather(z1), distributed.gather(z2)]), dim=1) if gathered else q
    big_n, first = len(k) // 2, (distributed.rank() * n if gathered else 0)
    sim = q @ k.t() / temperature
    mine = torch.arange(first, first + n, device=q.device)
    own, other = torch.cat([mine, mine + big_n]), torch.cat([mine + big_n, mine])
    sim[torch.arange(2 * n, device=q.device), own] = float("-inf")  # a view is not its own negative
    return F.cross_entropy(sim, other)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE (MoCo): query q_i's positive is key k_i (no gradient), its negatives are the
    queued keys. Inputs need not be normalised."""
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ F.normalize(queue.detach(), dim=1).t()
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@torch.no_grad()
def per_cluster_sums(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """How many rows of `x` each of `k` clusters got, and the sum of those rows (K x dim)."""
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    return counts, torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)


def kl_to_uniform(probs: torch.Tensor) -> torch.Tensor:
    """KL(pbar || uniform) = log K + sum_k pbar_k log pbar_k on the batch-mean assignment pbar
    (batch = first dimension, clusters = last; averaged over any dimensions in between):
    0 when clusters are used uniformly, log K when every sample picks the same one. CARL's
    collapse regulariser and Contrastive Clustering's entropy term."""
    pbar = distributed.batch_mean(probs)  # over the global batch
    return (math.log(probs.shape[-1]) + (pbar * torch.log(pbar.clamp_min(1e-12))).sum(dim=-1)).mean()


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp equipartition (SwAV): returns codes Q (N x K) whose rows sum to 1 and
    whose columns each sum to N / K."""
    q = torch.exp((scores - scores.max()) / epsilon).t()  # K x N
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    return (q * n).t()


class Queue(nn.Module):
    """A FIFO of the last `size` vectors (MoCo keys, SwAV features)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("items", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, x: torch.Tensor) -> None:
        size = self.items.shape[0]
        idx = (self.ptr + torch.arange(x.shape[0], device=x.device)) % size
        self.items[idx] = x.detach().to(self.items.dtype)
        self.ptr.copy_((self.ptr + x.shape[0]) % size)
        self.filled.copy_(torch.clamp(self.filled + x.shape[0], max=size))

    def get(self) -> torch.Tensor:
        return self.items[: int(self.filled)]
