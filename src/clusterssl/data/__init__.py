"""Datasets: each source knows how to fetch its raw files and prepare them. Which sources exist
is found, not listed: data/registry.py (a module declares `DATASETS`; installed packages and the
params key `plugins` add theirs).

Prepared format (DESIGN.md): `train.npz` / `test.npz` with `images` (uint8, N x H x W x C) and
`labels` (int64), plus `meta.json` (name, classes, shape, counts, checksums of the outputs)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..io import UserError, atomic_dir, file_sha256, read_json, write_json
from .registry import SOURCES, describe, refresh, use_plugins, with_plugins  # noqa: F401 (the package's interface)
from .shards import ShardedSplit, has_shards, index_file

# SOURCES: name -> source (registry.py lists what a source provides); filled at the end of this
# file, once the names a dataset module may import from here exist. Sources with SHARDED = True
# provide prepare_into(raw_dir, out_dir) instead of load_raw: their splits are written as shards
# (data/shards.py) and loaded as ShardedSplit


def get_source(name: str):
    try:
        return SOURCES[name]
    except KeyError:
        raise UserError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(SOURCES))}") from None


def fetch(name: str, raw_dir: Path) -> Path:
    """Bring the raw files of `name` into `raw_dir` (checksums verified); atomic."""
    source = get_source(name)
    with atomic_dir(raw_dir) as tmp:
        source.fetch(tmp)
    return raw_dir


def prepare(name: str, raw_dir: Path, out_dir: Path) -> Path:
    source = get_source(name)
    if not raw_dir.exists():
        raise UserError(f"{raw_dir}: raw data not found; run `clusterssl data fetch {name}` first")
    classes = source.read_classes(raw_dir) if hasattr(source, "read_classes") else source.CLASSES
    facts = describe(name, source)
    if len(classes) != facts.num_classes:
        raise UserError(f"{raw_dir}: holds {len(classes)} class names, but {name} has {facts.num_classes} classes; "
                        f"delete {raw_dir} and run `clusterssl data fetch {name}` again")
    if facts.sharded:
        with atomic_dir(out_dir) as tmp:
            counts = source.prepare_into(raw_dir, tmp)
            shape = list(facts.shape)
            write_json(tmp / "meta.json", {"name": name, "classes": list(classes), "image_shape": shape, "format": "shards",
                                           "num_train": counts["train"], "num_test": counts["test"], "splits": counts})
        return out_dir
    train, test = source.load_raw(raw_dir)
    extra = source.load_extra(raw_dir) if hasattr(source, "load_extra") else {}
    for split, (images, _) in {"train": train, "test": test, **extra}.items():
        if tuple(images.shape[1:]) != facts.shape:
            raise UserError(f"{name}: its {split} images are {' x '.join(map(str, images.shape[1:]))}, but its module "
                            f"({facts.module}) declares SHAPE {' x '.join(map(str, facts.shape))}; fix one of them")
    with atomic_dir(out_dir) as tmp:
        write_prepared(tmp, name, classes, train, test, extra=extra)
    return out_dir


def write_prepared(out_dir: Path, name: str, classes, train: tuple, test: tuple, extra: dict | None = None, **meta) -> None:
    """Write the prepared format into the (existing, temporary) folder `out_dir`; `extra` adds
    splits beyond train and test (STL-10's unlabeled); `meta` adds entries to meta.json (the
    tuning proxy records how it was drawn)."""
    (xtr, ytr), (xte, yte) = train, test
    splits = {"train": train, "test": test, **(extra or {})}
    for split, (x, y) in splits.items():
        assert x.dtype == np.uint8 and x.ndim == 4, (x.dtype, x.shape)
        np.savez(out_dir / f"{split}.npz", images=x, labels=y.astype(np.int64))
    write_json(
        out_dir / "meta.json",
        {
            "name": name,
            "classes": list(classes),
            "image_shape": list(xtr.shape[1:]),
            "num_train": int(len(xtr)),
            "num_test": int(len(xte)),
            "splits": {split: int(len(y)) for split, (_, y) in splits.items()},
            # load_prepared checks these: a file changed or damaged since is refused
            "sha256": {f"{split}.npz": file_sha256(out_dir / f"{split}.npz") for split in splits},
            **meta,
        },
    )


class Split:
    """One prepared split in memory: uint8 NHWC images and int64 labels."""

    streamed = False

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> np.ndarray:
        return self.images[indices]

    def chunks(self, size: int = 1024):
        """(indices, images) in order, as ShardedSplit.chunks gives them (in any order)."""
        for i in range(0, len(self), size):
            yield np.arange(i, min(i + size, len(self))), self.images[i : i + size]


def load_prepared(prepared_dir: Path, split: str, limit: int | None = None) -> Split | ShardedSplit:
    """An in-memory Split, or a ShardedSplit where `prepare` wrote shards (`limit` then unused:
    presets for sharded data train on every image). Checked against meta.json before use: the
    file's SHA-256, the images' dtype and shape, the labels' type, count and range."""
    prepared_dir = Path(prepared_dir)
    fix = f"delete {prepared_dir} and run `clusterssl data prepare` again"
    if has_shards(prepared_dir, split):
        sharded = ShardedSplit(prepared_dir, split)
        if limit is not None and limit < len(sharded):
            raise UserError(f"{prepared_dir}: prepared in shards, which are read whole; set data.max_train and "
                            "eval.max_train to null for this dataset")
        check_labels(index_file(prepared_dir, split), split, sharded.labels, len(sharded), _prepared_meta(prepared_dir, fix), fix)
        return sharded
    f = prepared_dir / f"{split}.npz"
    if not f.exists():
        raise UserError(f"{f}: prepared data not found; run `clusterssl data prepare` first")
    meta = _prepared_meta(prepared_dir, fix)
    expected = meta.get("sha256", {}).get(f.name)
    if expected is None:  # a folder prepared before checksums: nothing says the file is the one prepared
        raise UserError(f"{prepared_dir / 'meta.json'}: records no SHA-256 of {f.name} (written by an older clusterssl); {fix}")
    if file_sha256(f) != expected:
        raise UserError(f"{f}: changed or damaged since it was prepared (SHA-256 differs from meta.json); {fix}")
    try:
        with np.load(f, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as exc:
        raise UserError(f"{f}: not a prepared split ({type(exc).__name__}: {str(exc)[:200]}); {fix}") from None
    check_images(f, images, meta, fix)
    check_labels(f, split, labels, len(images), meta, fix)
    if limit is not None and limit < len(labels):
        # a fixed, class-stratified-by-shuffle subset so quick runs still see every class
        idx = np.random.default_rng(0).permutation(len(labels))[:limit]
        images, labels = images[np.sort(idx)], labels[np.sort(idx)]
    return Split(images, labels)


def _prepared_meta(prepared_dir: Path, fix: str) -> dict:
    """meta.json of a prepared folder, with what load_prepared checks a split against."""
    path = prepared_dir / "meta.json"
    if not path.exists():
        raise UserError(f"{path}: not found, so the prepared splits beside it cannot be checked; {fix}")
    meta = read_json(path)
    missing = [k for k in ("classes", "image_shape") if k not in meta]
    if missing:
        raise UserError(f"{path}: has no {' or '.join(missing)} (written by an older clusterssl); {fix}")
    return meta


def check_images(f: Path, images: np.ndarray, meta: dict, fix: str) -> None:
    """uint8 N x H x W x C with meta.json's H, W, C: uint8 needs no finiteness check, and a float
    array (which could hold NaN) is refused by its dtype."""
    shape = tuple(meta["image_shape"])
    if images.dtype != np.uint8:
        raise UserError(f"{f}: its images are {images.dtype}, not uint8; {fix}")
    if images.ndim != 4 or images.shape[1:] != shape:
        raise UserError(f"{f}: its images have shape {images.shape}, not N x {' x '.join(map(str, shape))} "
                        f"(meta.json's image_shape); {fix}")


def check_labels(f: Path, split: str, labels: np.ndarray, count: int, meta: dict, fix: str) -> None:
    """1-D integer labels, one per image, each a class of meta.json's list; splits other than
    train and test may mark an image unlabelled with -1 (STL-10's unlabeled)."""
    classes, lowest = len(meta["classes"]), 0 if split in ("train", "test") else -1
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise UserError(f"{f}: its labels are a {labels.dtype} array of shape {labels.shape}, not 1-D integers; {fix}")
    if len(labels) != count:
        raise UserError(f"{f}: holds {count} images but {len(labels)} labels; {fix}")
    outside = (labels < lowest) | (labels >= classes)
    if outside.any():
        raise UserError(f"{f}: {int(outside.sum()):,} of {len(labels):,} labels are outside {lowest}..{classes - 1} (meta.json "
                        f"lists {classes} classes), the first {labels[outside][0]} at index {int(np.flatnonzero(outside)[0])}; {fix}")


def load_meta(prepared_dir: Path) -> dict:
    return read_json(Path(prepared_dir) / "meta.json")


refresh()  # last: a dataset module may import this package's names (write_prepared, load_meta)
