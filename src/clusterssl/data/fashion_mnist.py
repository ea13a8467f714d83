"""Fashion-MNIST (Xiao et al. 2017): 70k 28x28 grey images of 10 clothing classes.

Where the raw IDX archives come from (download.py): a mirror, then
`/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist` package), then the official
download location used by torchvision (`$CLUSTERSSL_FASHION_MNIST_URL` replaces it).

The SHA-256 is checked on the *decompressed* IDX bytes, so a re-compressed copy (Debian
re-gzips the files) verifies as long as its content is the original data."""
from __future__ import annotations

import gzip
import sys
import zlib
from pathlib import Path

import numpy as np

from ..io import UserError, stream_sha256
from . import download

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SHAPE = (28, 28, 1)
TITLE = "Fashion-MNIST"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the decompressed IDX files (measured on Debian's dataset-fashion-mnist 0.0~git20200523)
FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def content_sha256(path: Path, shown_as: str | None = None) -> str:
    try:
        with gzip.open(path, "rb") as f:
            return stream_sha256(f)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{shown_as or path}: corrupt archive ({exc}); delete it and fetch again") from None


def verify(path: Path, expected: str, shown_as: str | None = None) -> None:
    """`shown_as`: where the file came from (a mirror), which is what the user can fix."""
    got = content_sha256(path, shown_as)
    if got != expected:
        raise UserError(
            f"{shown_as or path}: checksum mismatch (SHA-256 of the decompressed data is {got}, expected {expected}); "
            "the archive is corrupt or not the original Fashion-MNIST: delete it and fetch again"
        )


def fetch(out_dir: Path) -> None:
    download.fetch_files(
        "fashion_mnist", FILES, OFFICIAL_URL, out_dir, verify, local_dirs=[DEBIAN_DIR],
        hint=f"Install Debian's package (`apt-get install -y dataset-fashion-mnist`, it puts the files in {DEBIAN_DIR}). ",
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file (big-endian header: magic, then one uint32 per dimension)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: corrupt archive ({exc}); delete the raw directory and fetch again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"{path}: truncated IDX header; delete the raw directory and fetch again")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise UserError(f"{path}: IDX header says {shape} but holds {arr.size} bytes")
    return arr.reshape(shape)


def load_raw(raw_dir: Path):
    def split(prefix):
        x = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte.gz")[..., None]  # N,28,28,1
        y = read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        return x, y

    return split("train"), split("t10k")


DATASETS = {"fashion_mnist": sys.modules[__name__]}  # this module is the source (data/registry.py)
