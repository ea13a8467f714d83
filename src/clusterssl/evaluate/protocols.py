"""The three frozen-feature protocols, identical for every method (METHODS.md)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# defined below train, whose online monitor uses the same one
from ..knn import knn_predict_ks
from .metrics import clustering_scores, matched_confusion


def held_out_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, fit) indices of n items: a seeded `fraction` (at least one) held out for a
    choice of learning rate, the rest to fit on."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(fraction * n)))
    return perm[:n_val], perm[n_val:]


def select_and_probe(train_x, train_y, test_x, test_y, epochs: int, lrs: list[float], weight_decay: float, batch_size: int, seed: int, val_fraction: float) -> dict:
    """The linear-probe protocol: each learning rate in `lrs` is fitted on the train features
    minus a seeded, held-out `val_fraction`; the one with the best validation top-1 is refitted
    on all train features and scored on the test set. A single fixed rate underfits some
    features and overfits others (raw pixels), so the rate is chosen per encoder, never on test."""
    train_x, train_y = np.asarray(train_x), np.asarray(train_y)
    val_acc = {}
    if len(lrs) > 1:
        val, fit = held_out_split(len(train_x), val_fraction, seed)
        for lr in lrs:
            val_acc[lr] = linear_probe(train_x[fit], train_y[fit], train_x[val], train_y[val], epochs, lr, weight_decay, batch_size, seed)["top1"]
    best = max(lrs, key=lambda lr: val_acc.get(lr, 0.0))
    result = linear_probe(train_x, train_y, test_x, test_y, epochs, best, weight_decay, batch_size, seed)
    return {**result, "lr": best, "val_top1": {str(k): v for k, v in val_acc.items()}}


def linear_probe(train_x, train_y, test_x, test_y, epochs: int, lr: float, weight_decay: float, batch_size: int, seed: int) -> dict:
    """One linear layer on standardised frozen features, AdamW with cosine decay; test top-1."""
    g = torch.Generator().manual_seed(seed)
    xtr, xte = torch.as_tensor(train_x, dtype=torch.float32), torch.as_tensor(test_x, dtype=torch.float32)
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    ytr, yte = torch.as_tensor(train_y), torch.as_tensor(test_y)
    n_classes = int(max(ytr.max(), yte.max())) + 1
    torch.manual_seed(seed)
    layer = torch.nn.Linear(xtr.shape[1], n_classes)
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, len(xtr) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr) - batch_size + 1 if len(xtr) >= batch_size else 1, batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(layer(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        train_acc = (layer(xtr).argmax(1) == ytr).float().mean().item()
        test_acc = (layer(xte).argmax(1) == yte).float().mean().item()
    return {"top1": test_acc, "train_top1": train_acc}


def knn(train_x, train_y, test_x, test_y, ks: list[int], temperature: float) -> dict:
    preds = knn_predict_ks(train_x, train_y, test_x, ks, temperature)
    return {f"k{k}_top1": float((preds[k] == np.asarray(test_y)).mean()) for k in ks}


def kmeans_clustering(x, y, n_clusters: int, n_init: int, seed: int) -> dict:
    """k-means (K = number of classes) on L2-normalised features; ACC / NMI / ARI."""
    from sklearn.cluster import (
        KMeans,  # imported here: sklearn's import is slow and only k-means needs it
    )

    xn = np.asarray(F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=1))
    pred = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(xn)
    return {**clustering_scores(y, pred), "confusion": matched_confusion(y, pred)}
