"""Frozen-feature extraction: pooled backbone features of the un-augmented train and test
images, saved once per (run, dataset) and read by every evaluation. Another dataset's images
(transfer) are first resized and channel-converted to the pretraining images' shape."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import paths
from ..augment import grey
from ..data import load_meta, load_prepared
from ..io import UserError, atomic_path


@torch.no_grad()
def encode(model, images: np.ndarray, mean, std, device, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    encoder = model.eval_encoder().eval()
    feats, clusters = [], []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).to(device).permute(0, 3, 1, 2).float().div_(255)
        x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        h = encoder(x)
        feats.append(h.float().cpu())
        logits = model.cluster_logits(h)
        if logits is not None:
            clusters.append(logits.argmax(1).cpu())
    return torch.cat(feats).numpy(), (torch.cat(clusters).numpy() if clusters else None)


def raw_pixel_features(images: np.ndarray) -> np.ndarray:
    """The no-learning baseline: pixels scaled to [0, 1], flattened."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def match_shape(images: np.ndarray, shape) -> np.ndarray:
    """uint8 NHWC `images` as (H, W, C) = `shape`: bilinear (antialiased) resize, luma for
    colour -> grey, replicated channels for grey -> colour."""
    h, w, c = shape
    if images.shape[1:] == tuple(shape):
        return images
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    if x.shape[1] != c:
        x = grey(x) if c == 1 else grey(x).expand(-1, c, -1, -1)
    if x.shape[2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def embed(params: dict, method: str, seed: int, dataset: str | None = None, threads: int | None = None) -> Path:
    """Features of `dataset` (default: the pretraining dataset) under `method`'s encoder."""
    from ..train import load_trained, pick_device  # imported here: it pulls in timm

    if threads:
        torch.set_num_threads(threads)
    dataset = dataset or params["dataset"]
    prepared = paths.prepared_dir(params, dataset)
    train = load_prepared(prepared, "train", params["eval"]["max_train"])
    test = load_prepared(prepared, "test")
    if dataset != params["dataset"]:
        shape = load_meta(paths.prepared_dir(params, params["dataset"]))["image_shape"]
        train.images, test.images = match_shape(train.images, shape), match_shape(test.images, shape)
    out = {"train_labels": train.labels, "test_labels": test.labels}
    if method == paths.RAW_PIXELS:
        out["train_features"] = raw_pixel_features(train.images)
        out["test_features"] = raw_pixel_features(test.images)
    else:
        device = pick_device(params["pretrain"]["device"])
        model, state = load_trained(params, method, seed, device)
        mean, std = state["mean"].to(device), state["std"].to(device)
        bs = params["eval"]["batch_size"]
        out["train_features"], tr_c = encode(model, train.images, mean, std, device, bs)
        out["test_features"], te_c = encode(model, test.images, mean, std, device, bs)
        if te_c is not None:
            out["train_head_clusters"], out["test_head_clusters"] = tr_c, te_c
    dest = paths.features_file(params, method, seed, dataset)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **out)
    return dest


def load_features(path: Path) -> dict:
    if not Path(path).exists():
        raise UserError(f"{path}: features not found; run `clusterssl embed` first")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
