"""The weighted k-NN classifier that both the training loop's online monitor and the k-NN
evaluation protocol (evaluate.protocols.knn) use: one definition, so the monitor measures what
the evaluation measures."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_x, train_y, test_x, k: int, temperature: float, chunk: int = 1024) -> np.ndarray:
    """Weighted k-NN (Wu et al., InstDisc): cosine similarity, votes weighted by exp(s / T)."""
    tr = F.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    te = F.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1)
    ytr = torch.as_tensor(train_y)
    n_classes = int(ytr.max()) + 1
    k = min(k, len(tr))
    preds = []
    for i in range(0, len(te), chunk):
        sim = te[i : i + chunk] @ tr.t()
        s, j = sim.topk(k, dim=1)
        w = (s / temperature).exp()
        votes = torch.zeros(len(s), n_classes).scatter_add_(1, ytr[j], w)
        preds.append(votes.argmax(1))
    return torch.cat(preds).numpy()
