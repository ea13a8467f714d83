"""Data-parallel pretraining across processes (torchrun; NCCL on GPUs, gloo on CPUs).

Each process trains on its slice of the global batch. What a loss needs from the whole batch
comes from here, so that N processes compute what one process computes on the global batch:

- `gather` (with gradients): negatives (SimCLR, CC), the columns of CC's cluster matrix;
- `batch_mean` (with gradients): batch-mean assignments (CARL's and CC's collapse terms);
- `gather_no_grad`: what updates state every process keeps identical (Sinkhorn codes over the
  global batch, CoKe's counts, centres and labels, MoCo's and SwAV's queues);
- `SyncBatchNorm`: BatchNorm statistics over the global batch (solo-learn syncs BatchNorm for
  every method); torch's own is CUDA-only, this one also runs on gloo, which is how the tests
  check the gradients on CPU.

Gradients: DDP averages each process's gradient; a term every process computes identically
(a batch-mean term) therefore keeps its weight, and a per-sample mean over local samples
becomes the mean over the global batch. With one process every function is the identity."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device_type: str) -> torch.device | None:
    """Join the process group torchrun set up; returns this process's CUDA device (None on CPU)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return None
    local = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return None


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous: torch's all-gather sends slices of
    its gradient to the other processes as they are, and a transposed one (CC's cluster
    columns) arrives scrambled."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def _scratch_device() -> torch.device:
    """Where small bookkeeping tensors go for a collective: NCCL takes CUDA tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def finish() -> None:
    """Leave the process group (every process, after its last collective)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather(x: torch.Tensor) -> torch.Tensor:
    """The global batch: every process's `x` concatenated in rank order; gradients flow back to
    each process's own part."""
    if not active():
        return x
    from torch.distributed.nn.functional import all_gather

    return _ContiguousGrad.apply(torch.cat(all_gather(x.contiguous())))


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not active():
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum over processes, with gradients."""
    if not active():
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x)


def batch_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean over dim 0 of the global batch (every process holds the same number of rows)."""
    if not active():
        return x.mean(dim=0)
    return all_reduce_sum(x.sum(dim=0)) / (len(x) * world_size())


def local_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """This process's `n` rows of a tensor computed on the gathered global batch."""
    return x[rank() * n : (rank() + 1) * n]


@torch.no_grad()
def sum_no_grad(x: torch.Tensor) -> torch.Tensor:
    if active():
        x = x.clone()
        dist.all_reduce(x)
    return x


def gather_objects(obj) -> list:
    """Every process's `obj`, in rank order (small objects: generator states)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def average(values: dict[str, float]) -> dict[str, float]:
    """Per-process running sums (loss terms) averaged over processes, for the history."""
    if not active() or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=_scratch_device())
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(values, t.cpu())}


def any_process(flag: bool) -> bool:
    """True on every process if it is True on one (a SIGTERM seen by one process stops all at the
    same step)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=_scratch_device())
    dist.all_reduce(t)
    return bool(t.item())


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch (any backend): two differentiable all-reduces, the mean
    and then the variance, in float32. Identical to BatchNorm when not distributed or in eval."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {x.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = x.numel() // x.shape[1] * world_size()
        mean = all_reduce_sum(xf.sum(dims)) / count
        var = all_reduce_sum(((xf - mean.view(shape)) ** 2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.num_batches_tracked.add_(1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / max(count - 1, 1), alpha=m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, _done: dict | None = None) -> nn.Module:
    """`module` with every BatchNorm replaced by SyncBatchNorm (same parameters and buffers, so
    checkpoints load into the plain model; a BatchNorm reachable twice is replaced once)."""
    done = {} if _done is None else _done
    if id(module) in done:
        return done[id(module)]
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        done[id(module)] = new.to(module.running_mean.device if module.running_mean is not None else "cpu")
        return done[id(module)]
    done[id(module)] = module
    for name, child in module.named_children():
        setattr(module, name, sync_batchnorm(child, done))
    return module
