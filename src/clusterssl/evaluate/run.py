"""`clusterssl eval <protocol>`: run one protocol for one encoder and seed, write its metrics JSON.

- linear / knn / cluster, and any other `@protocol` of a module in this folder (clusterssl/registry.py
  says what it declares): frozen features of the pretraining dataset (cached by `embed`);
- transfer: the linear probe and k-NN on another dataset's frozen features (`--target`);
- semisup: fine-tuning on a labelled subset (`--fraction`; evaluate/semisup.py)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import paths, registry
from ..io import UserError, file_sha256, write_json
from ..registry import protocol
from .features import checked_features
from .metrics import clustering_scores
from .protocols import kmeans_clustering, knn, select_and_probe


@protocol("linear", order=10, columns=[["linear_top1", ["top1"], True, "linear top-1 %"]])
def _probe(f: dict, cfg: dict, seed: int) -> dict:
    c = cfg["linear"]
    return select_and_probe(f["train_features"], f["train_labels"], f["test_features"], f["test_labels"], c["epochs"], c["lr"], c["weight_decay"], c["batch_size"], seed, c["val_fraction"])


@protocol("knn", order=20, columns=[["knn200_top1", ["k200_top1"], True, "k-NN k=200 %"], ["knn20_top1", ["k20_top1"], True, "k-NN k=20 %"]])
def _knn(f: dict, cfg: dict, seed: int) -> dict:
    return knn(f["train_features"], f["train_labels"], f["test_features"], f["test_labels"], cfg["knn"]["k"], cfg["knn"]["temperature"])


@protocol("cluster", order=30, columns=[
    ["kmeans_acc", ["kmeans", "acc"], False, "k-means ACC"],
    ["kmeans_nmi", ["kmeans", "nmi"], False, "k-means NMI"],
    ["kmeans_ari", ["kmeans", "ari"], False, "k-means ARI"],
    # the method's own cluster head (CC, CADC, CoKe's first head, CARL's prototypes), where it has one
    ["head_acc", ["head", "acc"], False, "head ACC"],
    ["head_nmi", ["head", "nmi"], False, "head NMI"],
    ["head_ari", ["head", "ari"], False, "head ARI"],
    ["head_clusters", ["head", "clusters_used"], None, "head clusters used"],
])
def _cluster(f: dict, cfg: dict, seed: int) -> dict:
    """k-means (and a clustering head's own assignments) scored on `eval.cluster.split`: the
    test split, or train+test as Contrastive Clustering reports CIFAR/STL, or train as CoKe does."""
    split = cfg["cluster"]["split"]
    parts = {"test": ["test"], "train": ["train"], "train+test": ["train", "test"]}[split]
    take = lambda key: np.concatenate([f[f"{p}_{key}"] for p in parts])
    n_classes = int(np.unique(f["train_labels"]).size)
    labels = take("labels")
    result = {"kmeans": kmeans_clustering(take("features"), labels, n_classes, cfg["cluster"]["n_init"], seed)}
    if "test_head_clusters" in f:
        clusters = take("head_clusters")
        result["head"] = {**clustering_scores(labels, clusters), "clusters_used": int(np.unique(clusters).size)}
    return result


def _transfer(f: dict, cfg: dict, seed: int) -> dict:
    """The frozen encoder on another dataset, with the same probe and k-NN."""
    return {"linear": _probe(f, cfg, seed), "knn": _knn(f, cfg, seed)}


def evaluate(params: dict, protocol: str, method: str, seed: int, threads: int | None = None, target: str | None = None, fraction: float | None = None) -> Path:
    cfg = params["eval"]
    if protocol == "semisup":
        from .semisup import semisup

        if fraction not in cfg["semisup"]["fractions"]:
            raise UserError(f"--fraction {fraction} is not one of eval.semisup.fractions {cfg['semisup']['fractions']} in the params file")
        return semisup(params, method, seed, fraction, threads)
    if method == paths.SCRATCH:
        raise UserError(f"'{paths.SCRATCH}' is a semi-supervised baseline only (it has no pretrained features); use `eval semisup`")
    if threads:
        torch.set_num_threads(threads)
    if protocol == "transfer":
        if target not in cfg["transfer"]["datasets"]:
            raise UserError(f"--target {target} is not one of eval.transfer.datasets {cfg['transfer']['datasets']} in the params file")
        dataset, name, settings = target, paths.transfer_name(target), {"linear": cfg["linear"], "knn": cfg["knn"]}
    else:
        dataset, name, settings = params["dataset"], protocol, cfg[protocol]
    features, f = checked_features(params, method, seed, dataset)
    t0 = time.time()
    result = (_transfer if protocol == "transfer" else registry.protocol_function(protocol))(f, cfg, seed)
    out = paths.metrics_file(params, method, seed, name)
    # what the numbers came from, which the report checks against the folder the file is in
    write_json(out, {
        "dataset": dataset, "pretrained_on": params["dataset"], "method": method, "seed": seed, "protocol": protocol,
        "evaluation": name, "features_sha256": file_sha256(features), "checkpoint_sha256": f["provenance"]["checkpoint_sha256"],
        "settings": settings, "num_train": int(len(f["train_labels"])), "num_test": int(len(f["test_labels"])),
        "seconds": round(time.time() - t0, 2), "metrics": result,
    })
    return out
