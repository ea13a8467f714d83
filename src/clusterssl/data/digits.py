"""scikit-learn's bundled 8x8 handwritten digits (1,797 images): the `tiny` preset's dataset.

No download: `fetch` copies the arrays out of scikit-learn into the raw directory so that the
stage structure (fetch -> prepare) is the same as for every other dataset."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

CLASSES = tuple(str(i) for i in range(10))
SHAPE = (8, 8, 1)
TITLE = "digits (8x8)"
TEST_FRACTION = 0.25


def fetch(out_dir: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    np.savez(out_dir / "digits.npz", images=d.images, labels=d.target)


def load_raw(raw_dir: Path):
    with np.load(raw_dir / "digits.npz") as z:
        images, labels = z["images"], z["labels"].astype(np.int64)
    x = np.round(images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]  # values 0..16 -> 0..255
    # fixed stratified split: every class gets the same test fraction
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: int(round(len(idx) * TEST_FRACTION))]] = True
    return (x[~test], labels[~test]), (x[test], labels[test])


DATASETS = {"digits": sys.modules[__name__]}  # this module is the source (data/registry.py)
