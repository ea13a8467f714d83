"""The weighted k-NN classifier that both the training loop's online monitor and the k-NN
evaluation protocol (evaluate.protocols.knn) use: one definition, so the monitor measures what
the evaluation measures."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def knn_predict(train_x, train_y, test_x, k: int, temperature: float, chunk: int = 1024) -> np.ndarray:
    """Weighted k-NN (Wu et al., InstDisc): cosine similarity, votes weighted by exp(s / T)."""
    return knn_predict_ks(train_x, train_y, test_x, [k], temperature, chunk)[k]


@torch.no_grad()
def knn_predict_ks(train_x, train_y, test_x, ks: list[int], temperature: float, chunk: int = 1024) -> dict[int, np.ndarray]:
    """`knn_predict` for each k in `ks` from one pass over the similarities: the largest k's
    neighbours, sorted by similarity, begin with every smaller k's (the similarity matrix is most
    of the protocol's time)."""
    tr = F.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    te = F.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1)
    ytr = torch.as_tensor(train_y)
    n_classes = int(ytr.max()) + 1
    clipped = {k: min(k, len(tr)) for k in ks}
    preds = {k: [] for k in ks}
    for i in range(0, len(te), chunk):
        s, j = (te[i : i + chunk] @ tr.t()).topk(max(clipped.values()), dim=1)
        w = (s / temperature).exp()
        for k, n in clipped.items():
            votes = torch.zeros(len(s), n_classes).scatter_add_(1, ytr[j[:, :n]], w[:, :n])
            preds[k].append(votes.argmax(1))
    return {k: torch.cat(p).numpy() for k, p in preds.items()}
