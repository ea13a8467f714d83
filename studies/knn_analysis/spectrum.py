"""Why CARL's 20-NN trails: the features' effective rank, and 20-NN on features as they are
(the protocol), centred, and standardised per dimension (diagnostics only, never the protocol).

    python -m studies.knn_analysis.spectrum [results/features/fashion_mnist] [carl simclr raw_pixels]

Reads each method's seed*/fashion_mnist.npz under the folder (written by `clusterssl embed`)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from clusterssl.knn import knn_predict


def effective_rank(x: np.ndarray) -> float:
    """exp of the entropy of the normalised squared singular values of the centred features."""
    s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p + 1e-12)).sum()))


def knn20(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, test_y: np.ndarray) -> float:
    pred = knn_predict(torch.from_numpy(train).float(), torch.from_numpy(train_y), torch.from_numpy(test).float(), k=20, temperature=0.1)
    return round(100 * float((pred == test_y).mean()), 2)


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "results/features/fashion_mnist")
    methods = sys.argv[2:] or ["carl", "simclr", "raw_pixels"]
    torch.set_num_threads(1)
    print("method | seed | dim | effective rank (10,000 train) | 20-NN as is | centred | standardised")
    for method in methods:
        for f in sorted(folder.glob(f"{method}/seed*/fashion_mnist.npz")):
            z = np.load(f)
            xtr, xte, ytr, yte = z["train_features"], z["test_features"], z["train_labels"], z["test_labels"]
            mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
            scores = [knn20(a, ytr, b, yte) for a, b in ((xtr, xte), (xtr - mu, xte - mu), ((xtr - mu) / sd, (xte - mu) / sd))]
            print(f"{method} | {f.parent.name} | {xtr.shape[1]} | {effective_rank(xtr[:10000]):.1f} | " + " | ".join(map(str, scores)), flush=True)


if __name__ == "__main__":
    main()
