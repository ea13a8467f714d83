"""Frozen-feature extraction: pooled backbone features of the un-augmented train and test
images, saved once per (run, dataset) and read by every evaluation. Another dataset's images
(transfer) are first resized and channel-converted to the pretraining images' shape."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import paths
from ..augment import grey, normalise
from ..data import load_meta, load_prepared
from ..io import UserError, atomic_path


@torch.no_grad()
def encode(model, split, mean, std, device, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (and cluster-head assignments) of every image of `split` (in memory or in
    shards), rows in index order."""
    encoder = model.eval_encoder().eval()
    feats, clusters = None, None
    for idx, images in split.chunks(batch_size):
        x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255)
        x = normalise(x, mean, std)
        h = encoder(x)
        logits = model.cluster_logits(h)
        if feats is None:
            feats = np.empty((len(split), h.shape[1]), dtype=np.float32)
            clusters = None if logits is None else np.empty(len(split), dtype=np.int64)
        feats[idx] = h.float().cpu().numpy()
        if logits is not None:
            clusters[idx] = logits.argmax(1).cpu().numpy()
    return feats, clusters


def raw_pixel_features(images: np.ndarray) -> np.ndarray:
    """The no-learning baseline: pixels scaled to [0, 1], flattened."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


SHARDED_RAW_SIDE = 32  # sharded datasets' raw pixels are first downsampled: 224 x 224 x 3 = 150k values per image would not fit


def raw_features(split, indices: np.ndarray | None = None) -> np.ndarray:
    """raw_pixel_features of a split (or of its images at `indices`); in shards: at 32 x 32."""
    if not split.streamed:
        return raw_pixel_features(split.images if indices is None else split.images[indices])
    shrink = lambda x: raw_pixel_features(match_shape(x, (SHARDED_RAW_SIDE, SHARDED_RAW_SIDE, x.shape[3])))
    if indices is not None:
        return shrink(split.take(indices))
    out = np.empty((len(split), SHARDED_RAW_SIDE * SHARDED_RAW_SIDE * 3), dtype=np.float32)
    for idx, x in split.chunks():
        out[idx] = shrink(x)
    return out


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
    from ..runtime import load_trained, use_device  # imported here: it pulls in timm

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
        out["train_features"], out["test_features"] = raw_features(train), raw_features(test)
    else:
        device = use_device(params["pretrain"]["device"])
        model, state = load_trained(params, method, seed, device)
        mean, std = state["mean"].to(device), state["std"].to(device)
        bs = params["eval"]["batch_size"]
        out["train_features"], tr_c = encode(model, train, mean, std, device, bs)
        out["test_features"], te_c = encode(model, test, mean, std, device, bs)
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
