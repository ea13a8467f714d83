"""STL-10 (Coates et al. 2011): 96x96 colour images of 10 classes, 5k labelled train, 8k test
and 100k unlabelled images, from the official binary archive.

The binaries hold each image as 3 x 96 x 96 bytes in column-major order (the x axis varies
slowest within a channel), labels as bytes 1..10. `unlabeled` is prepared as a third split
(labels -1) that presets add to the pretraining set, as the papers pretrain on train+unlabeled."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..io import UserError
from . import download
from .archives import extract

OFFICIAL_URL = "http://ai.stanford.edu/~acoates/stl10/"
ARCHIVE = "stl10_binary.tar.gz"
MD5 = "91f7769df0f17e558f3565bffb0c7dfb"
FOLDER = "stl10_binary"
CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
SIDE = 96
SHAPE = (SIDE, SIDE, 3)
TITLE = "STL-10"


def fetch(out_dir: Path) -> None:
    download.fetch_files("stl10", {ARCHIVE: MD5}, OFFICIAL_URL, out_dir)
    extract(out_dir / ARCHIVE, out_dir)


def read_images(path: Path) -> np.ndarray:
    """N x 96 x 96 x 3 uint8 from an STL-10 `*_X.bin` file."""
    if not path.is_file():
        raise UserError(f"{path}: not found; delete {path.parent.parent} and fetch STL-10 again")
    raw = np.fromfile(path, dtype=np.uint8)
    per_image = 3 * SIDE * SIDE
    if raw.size % per_image:
        raise UserError(f"{path}: {raw.size} bytes is not a whole number of 3x{SIDE}x{SIDE} images; the file is truncated: fetch again")
    return np.ascontiguousarray(raw.reshape(-1, 3, SIDE, SIDE).transpose(0, 3, 2, 1))  # (N, C, W, H) -> (N, H, W, C)


def read_labels(path: Path, count: int) -> np.ndarray:
    y = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
    if len(y) != count or (len(y) and (y.min() < 0 or y.max() >= len(CLASSES))):
        raise UserError(f"{path}: expected {count} labels in 1..{len(CLASSES)}; the file is corrupt: fetch again")
    return y


def _split(folder: Path, name: str):
    x = read_images(folder / f"{name}_X.bin")
    return x, read_labels(folder / f"{name}_y.bin", len(x))


def load_raw(raw_dir: Path):
    folder = raw_dir / FOLDER
    return _split(folder, "train"), _split(folder, "test")


def load_extra(raw_dir: Path) -> dict:
    """Splits beyond train and test: the 100k unlabelled images."""
    x = read_images(raw_dir / FOLDER / "unlabeled_X.bin")
    return {"unlabeled": (x, np.full(len(x), -1, dtype=np.int64))}


DATASETS = {"stl10": sys.modules[__name__]}  # this module is the source (data/registry.py)
