"""Frozen-feature extraction: pooled backbone features of the un-augmented train and test
images, saved once per (run, dataset) and read by every evaluation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import paths
from ..data import load_prepared
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


def embed(params: dict, method: str, seed: int, threads: int | None = None) -> Path:
    from ..train import load_trained, pick_device  # imported here: it pulls in timm

    if threads:
        torch.set_num_threads(threads)
    dataset = params["dataset"]
    prepared = paths.prepared_dir(params, dataset)
    train = load_prepared(prepared, "train", params["eval"]["max_train"])
    test = load_prepared(prepared, "test")
    out = {"train_labels": train.labels, "test_labels": test.labels}
    if method == paths.RAW_PIXELS:
        out["train_features"] = raw_pixel_features(train.images)
        out["test_features"] = raw_pixel_features(test.images)
    else:
        device = pick_device(params["pretrain"]["device"])
        model, state = load_trained(paths.run_files(params, method, seed)[0], device)
        mean, std = state["mean"].to(device), state["std"].to(device)
        bs = params["eval"]["batch_size"]
        out["train_features"], tr_c = encode(model, train.images, mean, std, device, bs)
        out["test_features"], te_c = encode(model, test.images, mean, std, device, bs)
        if te_c is not None:
            out["train_head_clusters"], out["test_head_clusters"] = tr_c, te_c
    dest = paths.features_file(params, method, seed)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **out)
    return dest


def load_features(path: Path) -> dict:
    if not Path(path).exists():
        raise UserError(f"{path}: features not found; run `clusterssl embed` first")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
