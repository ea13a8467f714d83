"""CIFAR-10, CIFAR-100 and CIFAR-100-20 (Krizhevsky 2009): 60k 32x32 colour images, from the
official "python version" archives (a tar.gz of pickled batches).

`cifar100_20` is CIFAR-100 labelled with its 20 superclasses (the archive's `coarse_labels`):
the protocol of the deep-clustering papers (IIC, SCAN, Contrastive Clustering, CoKe).

The batches are pickles. They are read with an unpickler that builds only dicts, lists,
strings and numpy arrays, so a crafted archive from a mirror cannot run code while being read
(the archive's MD5 is checked first as well)."""
from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import UserError
from . import download
from .archives import extract

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/"

# what a CIFAR batch may contain: numpy arrays (any numpy version's pickle path) and builtins
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes made by Python 2 (latin-1 strings)
}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR batch holds only arrays, lists and strings")


def read_batch(path: Path) -> dict:
    """One pickled CIFAR batch as a dict with str keys."""
    try:
        with open(path, "rb") as f:
            obj = _DataOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise UserError(f"{path}: not a CIFAR batch ({type(e).__name__}: {e}); delete the raw folder and fetch again") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a CIFAR batch (a {type(obj).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


@dataclass(frozen=True)
class Cifar:
    name: str
    archive: str
    md5: str
    folder: str                   # what the archive unpacks to
    train_batches: tuple[str, ...]
    test_batch: str
    label_key: str                # the batch key holding the labels
    names_key: str                # the meta file's key holding the class names
    meta_file: str
    title: str
    num_classes: int

    SHAPE = (32, 32, 3)  # data/registry.py: what a dataset declares (a class constant, not a field)

    @property
    def TITLE(self) -> str:
        return self.title

    @property
    def NUM_CLASSES(self) -> int:
        return self.num_classes

    @property
    def mirror_name(self) -> str:  # cifar100_20 comes from CIFAR-100's archive
        return "cifar100" if self.name == "cifar100_20" else self.name

    def fetch(self, out_dir: Path) -> None:
        download.fetch_files(self.mirror_name, {self.archive: self.md5}, OFFICIAL_URL, out_dir)
        extract(out_dir / self.archive, out_dir)

    def _unpacked(self, raw_dir: Path) -> Path:
        folder = raw_dir / self.folder
        if not folder.is_dir():
            raise UserError(f"{raw_dir}: holds no {self.folder}/ folder (unpacked from {self.archive}); "
                            f"delete {raw_dir} and run `clusterssl data fetch {self.name}` again")
        return folder

    def read_classes(self, raw_dir: Path) -> list[str]:
        names = read_batch(self._unpacked(raw_dir) / self.meta_file).get(self.names_key)
        if not isinstance(names, list):
            raise UserError(f"{raw_dir / self.folder / self.meta_file}: no '{self.names_key}' list")
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    def _split(self, folder: Path, batches) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for b in batches:
            d = read_batch(folder / b)
            try:
                x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                y = np.asarray(d[self.label_key], dtype=np.int64)
            except (KeyError, ValueError) as e:
                raise UserError(f"{folder / b}: not a {self.name} batch ({type(e).__name__}: {e}); delete the raw folder and fetch again") from None
            if len(x) != len(y):
                raise UserError(f"{folder / b}: {len(x)} images but {len(y)} labels")
            xs.append(x), ys.append(y)
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    def load_raw(self, raw_dir: Path):
        folder = self._unpacked(raw_dir)
        return self._split(folder, self.train_batches), self._split(folder, [self.test_batch])


CIFAR10 = Cifar("cifar10", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
                tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "labels", "label_names", "batches.meta", "CIFAR-10", 10)
CIFAR100 = Cifar("cifar100", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python",
                 ("train",), "test", "fine_labels", "fine_label_names", "meta", "CIFAR-100", 100)
CIFAR100_20 = Cifar("cifar100_20", CIFAR100.archive, CIFAR100.md5, CIFAR100.folder, ("train",), "test",
                    "coarse_labels", "coarse_label_names", "meta", "CIFAR-100 (20 superclasses)", 20)

DATASETS = {"cifar10": CIFAR10, "cifar100": CIFAR100, "cifar100_20": CIFAR100_20}  # data/registry.py
