"""ImageNet-1k (ILSVRC-2012, `imagenet`) and ImageNet-100 (`imagenet100`: the 100 classes of CMC,
Tian et al. 2019, `imagenet100.txt` in HobbitLong/CMC, the subset solo-learn and the clustering
papers pretrain on). ImageNet cannot be downloaded without an account, so the images come from
an ImageFolder the user already has (`$CLUSTERSSL_IMAGENET_DIR`, with `train/` and `val/`
holding one folder per WordNet id, as torchvision's ImageNet and most clusters lay it out); the
50-per-class validation set is the test split, as in the papers.

`prepare` decodes every image once (in worker processes), resizes its shorter side to 224 with
bicubic interpolation, keeps the central 224 x 224 square and writes the result as WebDataset
shards (data/shards.py): ImageNet-100's 126,689 train images would need 19 GB as one array,
ImageNet-1k's 1,281,167 would need 193 GB. Deviation from solo-learn, written down in the
preset: random crops are taken from that central square, not from the whole image."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from ..io import UserError, read_json, write_json

DIR_ENV = "CLUSTERSSL_IMAGENET_DIR"
SIZE = 224
# CMC's list, in its file's order; checked against two independent public copies (2026-12-02)
CMC_CLASSES = """
n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245 n01773797
n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148 n03530642 n04435653
n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993 n04493381 n02109047 n04111531
n02877765 n04429376 n02009229 n01978455 n02106550 n01820546 n01692333 n07714571 n02974003 n02114855
n03785016 n03764736 n03775546 n02087046 n07836838 n04099969 n04592741 n03891251 n02701002 n03379051
n02259212 n07715103 n03947888 n04026417 n02326432 n03637318 n01980166 n02113799 n02086240 n03903868
n02483362 n04127249 n02089973 n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322
n02113978 n03787032 n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029
n03837869 n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045
n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672 n02090622
""".split()
# SHA-256 of the list above joined by newlines (with a final one): a test keeps it unchanged
CMC_CLASSES_SHA256 = "79f3f1552ccc478ce24bd934b4573625db584ddc1f4643ae23c994a94cb11397"
# ImageNet-1k's 1000 WordNet ids, sorted, read from the copy timm ships (timm/data/_info/
# imagenet_synsets.txt); this hash of them (joined by newlines, with a final one) also matches
# the ILSVRC-2012 localisation challenge's LOC_synset_mapping.txt (checked 2026-12-03)
IMAGENET_1K_SHA256 = "70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SPLITS = {"train": "train", "test": "val"}
MANIFEST = "files.json"


def list_hash(classes) -> str:
    return hashlib.sha256(("\n".join(classes) + "\n").encode()).hexdigest()


def imagenet_1k_classes() -> tuple[str, ...]:
    """The 1000 classes of ILSVRC-2012 (timm's list, its hash checked): read without importing timm."""
    spec = importlib.util.find_spec("timm")
    path = Path(spec.origin).parent / "data" / "_info" / "imagenet_synsets.txt"
    classes = tuple(path.read_text().split())
    if list_hash(classes) != IMAGENET_1K_SHA256:
        raise UserError(f"{path}: not ImageNet-1k's 1000 WordNet ids as clusterssl knows them (SHA-256 differs); "
                        "reinstall timm (pip install --force-reinstall timm)")
    return classes


class ImageNetFolder:
    """A set of ImageNet classes read from the user's ImageFolder; labels follow ImageFolder's
    convention (sorted WordNet ids), as torchvision's and solo-learn's loaders give them."""

    SHARDED = True  # data/__init__.py: prepare_into writes shards, loads give a ShardedSplit

    def __init__(self, title: str, read_classes, num_classes: int):
        self.title = title
        self._read_classes = read_classes  # called when the classes are first needed
        self.NUM_CLASSES = num_classes  # known without reading the list (the registry asks at every start)

    @functools.cached_property
    def CLASSES(self) -> tuple[str, ...]:
        return tuple(sorted(self._read_classes()))

    @property
    def SIZE(self) -> int:
        return SIZE

    @property
    def SHAPE(self) -> tuple[int, int, int]:
        return (SIZE, SIZE, 3)

    @property
    def TITLE(self) -> str:
        return self.title

    def list_class_images(self, folder: Path) -> list[tuple[str, int]]:
        """(path relative to `folder`, label) of every image of the classes, in a fixed order;
        folders of other classes are ignored."""
        missing = [c for c in self.CLASSES if not (folder / c).is_dir()]
        if missing:
            raise UserError(f"{folder}: {len(missing)} of {self.title}'s {len(self.CLASSES)} class folders are missing "
                            f"(e.g. {', '.join(missing[:3])}); point ${DIR_ENV} at an ImageNet ImageFolder "
                            "(train/ and val/ with one folder per WordNet id)")
        out = []
        for label, c in enumerate(self.CLASSES):
            files = sorted(f.name for f in (folder / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise UserError(f"{folder / c}: no images ({', '.join(IMAGE_SUFFIXES)}); the ImageFolder is incomplete")
            out += [(f"{c}/{name}", label) for name in files]
        return out

    def fetch(self, out_dir: Path) -> None:
        """Record where the user's ImageNet is and which files are this subset's (nothing copied)."""
        root = os.environ.get(DIR_ENV)
        if not root:
            raise UserError(f"{self.title}: ImageNet cannot be downloaded without an account; set ${DIR_ENV} to the "
                            "folder holding ImageNet's train/ and val/ ImageFolders (one folder per WordNet id)")
        root = Path(root).resolve()
        manifest = {"root": str(root), "classes": list(self.CLASSES)}
        for split, folder in SPLITS.items():
            if not (root / folder).is_dir():
                raise UserError(f"{root / folder}: not found; ${DIR_ENV} must hold train/ and val/ ImageFolders")
            files = self.list_class_images(root / folder)
            manifest[split] = [[f"{folder}/{rel}", label, (root / folder / rel).stat().st_size] for rel, label in files]
        write_json(Path(out_dir) / MANIFEST, manifest)

    def prepare_into(self, raw_dir: Path, out_dir: Path, workers: int | None = None) -> dict:
        """Decode, resize and shard both splits into `out_dir`; returns {split: count}."""
        import torch

        from .shards import write_split

        manifest = read_json(Path(raw_dir) / MANIFEST)
        root = Path(manifest["root"])
        workers = min(8, len(os.sched_getaffinity(0))) if workers is None else workers  # the CPUs this job may use
        counts = {}
        for split in SPLITS:
            files = manifest[split]
            for rel, _, size in files:
                if not (root / rel).is_file() or (root / rel).stat().st_size != size:
                    raise UserError(f"{root / rel}: missing or changed since `clusterssl data fetch`; fetch again")
            # a fixed shuffle, so that every shard holds every class (shards are read in order)
            order = np.random.default_rng(0).permutation(len(files))
            files = [files[i] for i in order]
            labels = np.array([label for _, label, _ in files], dtype=np.int64)
            loader = torch.utils.data.DataLoader(_Decode(root, files), batch_size=None, num_workers=workers)
            write_split(out_dir, split, _images(loader), labels)
            counts[split] = len(files)
        return counts


class _Decode:
    """One file -> uint8 SIZE x SIZE x 3 (shorter side to SIZE, bicubic; central square)."""

    def __init__(self, root: Path, files: list):
        self.root, self.files = root, files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> np.ndarray | str:
        """The image, or why it cannot be read (raised by the main process: one clear error)."""
        from PIL import Image, UnidentifiedImageError

        path = self.root / self.files[i][0]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = SIZE / min(w, h)
                im = im.resize((max(SIZE, round(w * scale)), max(SIZE, round(h * scale))), Image.Resampling.BICUBIC)
                w, h = im.size
                left, top = (w - SIZE) // 2, (h - SIZE) // 2
                return np.asarray(im.crop((left, top, left + SIZE, top + SIZE)), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            return (f"{path}: cannot be read as an image ({type(exc).__name__}: {str(exc)[:200]}); "
                    "replace or delete it, then fetch and prepare again")


def _images(loader):
    for x in loader:
        if isinstance(x, str):
            raise UserError(x)
        yield x.numpy()


IMAGENET = ImageNetFolder("ImageNet-1k", imagenet_1k_classes, 1000)
IMAGENET100 = ImageNetFolder("ImageNet-100", lambda: CMC_CLASSES, 100)

DATASETS = {"imagenet": IMAGENET, "imagenet100": IMAGENET100}  # data/registry.py
