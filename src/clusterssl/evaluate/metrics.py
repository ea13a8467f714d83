"""Clustering metrics: ACC with Hungarian matching, NMI, ARI.

scipy and scikit-learn are imported where used: every evaluation job imports this module, and
their imports (about a second of CPU) are needed only by the clustering protocols."""
from __future__ import annotations

import numpy as np


def _contingency(labels, clusters) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of (cluster, class) pairs and the Hungarian matching that maximises the matched count."""
    from scipy.optimize import linear_sum_assignment

    labels, clusters = np.asarray(labels), np.asarray(clusters)
    _, li = np.unique(labels, return_inverse=True)
    _, ci = np.unique(clusters, return_inverse=True)
    counts = np.zeros((ci.max() + 1, li.max() + 1), dtype=np.int64)
    np.add.at(counts, (ci, li), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return counts, rows, cols


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Best one-to-one matching of clusters to classes (Hungarian), then accuracy.
    Works when the number of clusters differs from the number of classes (unmatched clusters
    count as errors)."""
    counts, rows, cols = _contingency(labels, clusters)
    return float(counts[rows, cols].sum() / len(np.asarray(labels)))


def matched_confusion(labels: np.ndarray, clusters: np.ndarray) -> list[list[int]]:
    """Confusion matrix after the Hungarian matching: row = true class, column = the class its
    cluster was matched to (one more column, "unmatched", when there are more clusters than
    classes). Its diagonal sums to ACC times the number of samples."""
    counts, rows, cols = _contingency(labels, clusters)
    n_classes = counts.shape[1]
    target = np.full(len(counts), n_classes)  # unmatched clusters go to the last column
    target[rows] = cols
    out = np.zeros((n_classes, n_classes + int(len(counts) > n_classes)), dtype=np.int64)
    for cluster, col in enumerate(target):
        out[:, col] += counts[cluster]
    return out.tolist()


def clustering_scores(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {
        "acc": cluster_accuracy(labels, clusters),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }
