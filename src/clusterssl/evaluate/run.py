"""`clusterssl eval <protocol>`: read cached features, run one protocol, write its metrics JSON."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import paths
from ..io import write_json
from .features import load_features
from .metrics import clustering_scores
from .protocols import kmeans_clustering, knn, select_and_probe


def evaluate(params: dict, protocol: str, method: str, seed: int, threads: int | None = None) -> Path:
    if threads:
        torch.set_num_threads(threads)
    f = load_features(paths.features_file(params, method, seed))
    cfg = params["eval"]
    t0 = time.time()
    if protocol == "linear":
        c = cfg["linear"]
        result = select_and_probe(f["train_features"], f["train_labels"], f["test_features"], f["test_labels"], c["epochs"], c["lr"], c["weight_decay"], c["batch_size"], seed, c["val_fraction"])
    elif protocol == "knn":
        result = knn(f["train_features"], f["train_labels"], f["test_features"], f["test_labels"], cfg["knn"]["k"], cfg["knn"]["temperature"])
    elif protocol == "cluster":
        n_classes = int(np.unique(f["train_labels"]).size)
        result = {"kmeans": kmeans_clustering(f["test_features"], f["test_labels"], n_classes, cfg["cluster"]["n_init"], seed)}
        if "test_head_clusters" in f:
            result["head"] = {**clustering_scores(f["test_labels"], f["test_head_clusters"]), "clusters_used": int(np.unique(f["test_head_clusters"]).size)}
    else:
        raise ValueError(protocol)
    out = paths.metrics_file(params, method, seed, protocol)
    write_json(out, {
        "dataset": params["dataset"], "method": method, "seed": seed, "protocol": protocol,
        "settings": cfg[protocol], "num_train": int(len(f["train_labels"])), "num_test": int(len(f["test_labels"])),
        "seconds": round(time.time() - t0, 2), "metrics": result,
    })
    return out
