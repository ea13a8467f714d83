"""Batched tensor augmentations, applied to a whole batch on the training device.

Every random draw is per sample and comes from an explicit `torch.Generator`, so a batch is
augmented identically under the same seed. All ops take and return float images in [0, 1],
shape (N, C, H, W). The crop and the flip are one `affine_grid` + `grid_sample` call for the
whole batch (the same approach as kornia's RandomResizedCrop, without its per-call overhead).
Kept by hand because it is faster: kornia.augmentation's same ops took 3.1-4.3x as long on the
default preset's batch (`python benchmarks/train_step.py`, five runs on a 2-core CPU,
2026-12-04), though the augmentation is only 2-4 % of a training step either way."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """Images in [0, 1] standardised per channel; in `memory_format` where one is given (the one
    the model trains in), else in the layout they came in."""
    y = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return y if memory_format is None else y.contiguous(memory_format=memory_format)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) < p


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_p: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Per-sample random crop (area fraction in `scale`, aspect ratio in `ratio`), resized to
    `size` x `size` with bilinear sampling, and mirrored left-right with probability `flip_p`."""
    n, device = x.shape[0], x.device
    area = _uniform(n, scale[0], scale[1], gen, device)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), gen, device)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen, device=device) * 2 - 1) * (1 - w)  # centre in [-1, 1] coords
    cy = (torch.rand(n, generator=gen, device=device) * 2 - 1) * (1 - h)
    flip = torch.where(_bernoulli(n, flip_p, gen, device), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device, dtype=x.dtype)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grey(x).mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor.view(-1, 1, 1, 1) + mean).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    g = grey(x)
    return ((x - g) * factor.view(-1, 1, 1, 1) + g).clamp(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate chroma in YIQ space by `shift` turns (in [-0.5, 0.5]); a smooth, batched stand-in
    for HSV hue shifting."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device, dtype=x.dtype)
    to_rgb = torch.linalg.inv(to_yiq)
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
    a = shift * 2 * math.pi
    cos, sin = torch.cos(a).view(-1, 1, 1), torch.sin(a).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,njhw->nihw", to_rgb, yiq).clamp(0, 1)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4  # RGB only
    hue: float = 0.1  # RGB only
    grayscale: float = 0.2  # RGB only
    solarize: float = 0.0
    local_crops: int = 0
    local_size: int = 0
    local_scale: tuple[float, float] = (0.05, 0.3)

    @classmethod
    def from_params(cls, p: dict) -> "AugmentConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in p.items()})


def colour(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Colour jitter (brightness, contrast; saturation and hue for RGB) with probability
    `jitter_prob`, random grayscale (RGB), solarize."""
    n, device = x.shape[0], x.device
    jitter = _bernoulli(n, cfg.jitter_prob, gen, device)
    y = x
    if cfg.brightness > 0:
        y = adjust_brightness(y, _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, gen, device))
    if cfg.contrast > 0:
        y = adjust_contrast(y, _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen, device))
    if x.shape[1] == 3:
        if cfg.saturation > 0:
            y = adjust_saturation(y, _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, gen, device))
        if cfg.hue > 0:
            y = adjust_hue(y, _uniform(n, -cfg.hue, cfg.hue, gen, device))
    x = _where(jitter, y, x)
    if x.shape[1] == 3 and cfg.grayscale > 0:
        x = _where(_bernoulli(n, cfg.grayscale, gen, device), grey(x).expand_as(x), x)
    if cfg.solarize > 0:
        x = _where(_bernoulli(n, cfg.solarize, gen, device), torch.where(x >= 0.5, 1 - x, x), x)
    return x


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator, size: int | None = None, local: bool = False) -> torch.Tensor:
    """One augmented view of every image in the batch."""
    size = size or x.shape[-1]
    scale = cfg.local_scale if local else cfg.crop_scale
    return colour(random_resized_crop(x, size, scale, cfg.crop_ratio, cfg.flip, gen), cfg, gen)


@dataclass(frozen=True)
class ViewSpec:
    """Which views a method trains on: `global_views` full-size augmented views, `local_views`
    small multi-crop views (count from the augment config when -1), and optionally the
    un-augmented `clean` image (CADC)."""

    global_views: int = 2
    local_views: int = 0
    clean: bool = False


def make_views(x: torch.Tensor, spec: ViewSpec, cfg: AugmentConfig, gen: torch.Generator) -> dict:
    out = {"views": [augment(x, cfg, gen) for _ in range(spec.global_views)]}
    n_local = cfg.local_crops if spec.local_views < 0 else spec.local_views
    if n_local:
        size = cfg.local_size or max(8, x.shape[-1] // 2)
        out["local_views"] = [augment(x, cfg, gen, size=size, local=True) for _ in range(n_local)]
    if spec.clean:
        out["clean"] = x
    return out
