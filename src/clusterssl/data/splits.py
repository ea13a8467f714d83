"""Class-balanced labelled subsets of a train split, for semi-supervised evaluation.

Made once per (fraction, seed) by their own stage and saved as index files, so every method
(and both baselines) fine-tunes on exactly the same images: methods differ only by their encoder."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import UserError, atomic_path


def class_balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of `fraction` of `labels`, the same number from every class (at least one),
    drawn with `seed`."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    per_class = max(1, int(round(fraction * len(labels) / len(classes))))
    rng = np.random.default_rng(seed)
    picks = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if per_class > len(members):
            raise UserError(
                f"a class-balanced {fraction:g} subset needs {per_class} images of class {c}, which has "
                f"{len(members)}; lower eval.semisup.fractions"
            )
        picks.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(picks))


def write_split(labels: np.ndarray, fraction: float, seed: int, dest: Path) -> Path:
    idx = class_balanced_subset(labels, fraction, seed)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, idx)
    return dest


def load_split(path: Path, num_train: int) -> np.ndarray:
    if not Path(path).exists():
        raise UserError(f"{path}: label subset not found; run `clusterssl data split` first")
    try:
        idx = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: not a label-subset file ({exc}); delete it and run `clusterssl data split` again") from None
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or (len(idx) and (idx.min() < 0 or idx.max() >= num_train)):
        raise UserError(f"{path}: does not index this train split of {num_train} images; delete it and run `clusterssl data split` again")
    return idx
