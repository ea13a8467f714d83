"""The report's figures, each from saved results."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def training_curves_figure(histories: dict, path: Path) -> None:
    """Loss and each of its terms per epoch, one panel per method (all seeds overlaid)."""
    fig, axes = plt.subplots(1, len(histories), figsize=(4.5 * len(histories), 3.4), squeeze=False)
    for ax, (method, runs) in zip(axes[0], histories.items()):
        for s, h in enumerate(runs):
            terms = [c for c in h.columns if c not in ("epoch", "lr", "seconds", "images_per_s")]
            for t in terms:
                ax.plot(h["epoch"], h[t], marker="o", ms=3, label=t if s == 0 else None, alpha=0.9)
        ax.set_title(method)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _save(fig, path)


def embed_2d(x: np.ndarray, kind: str, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    if kind == "pca" or x.shape[1] <= 2:
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE

    if x.shape[1] > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    return TSNE(n_components=2, init="pca", perplexity=min(30, len(x) // 4), random_state=seed).fit_transform(x)


def embedding_figure(features: dict, path: Path, kind: str, samples: int, seed: int, classes: list[str]) -> None:
    """2-D embedding (t-SNE or PCA) of a fixed random subset of test features, coloured by class."""
    fig, axes = plt.subplots(1, len(features), figsize=(4 * len(features), 4.6), squeeze=False)
    for ax, (method, (x, y)) in zip(axes[0], features.items()):
        idx = np.random.default_rng(seed).permutation(len(y))[:samples]
        e = embed_2d(x[idx].astype(np.float32), kind, seed)
        ax.scatter(e[:, 0], e[:, 1], c=y[idx], cmap="tab10", s=3, vmin=0, vmax=9)
        ax.set_title(method)
        ax.set_xticks([])
        ax.set_yticks([])
    cmap = plt.get_cmap("tab10")
    handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i), label=c) for i, c in enumerate(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(classes), 10), fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.12)
    _save(fig, path)
