"""Splits too large to hold as one uint8 array (ImageNet-100 at 224 px: 19 GB for the train
split): `prepare` writes them once as WebDataset tar shards (a JPEG, the label and the sample's
index per entry), and training reads them back through WebDataset in DataLoader worker
processes, which decode the JPEGs, so that the training loop receives the same uint8 NHWC
batches as from the in-memory splits and augments them on the device as usual.

Layout under `data/prepared/DATASET/`: `SPLIT/shard-000000.tar`, ... and `SPLIT.shards.json`
(each shard's name, count and SHA-256, the split's labels in index order, per-channel pixel
mean and std). Samples are written in a seeded random order, so every shard mixes all classes
and the index decides which process of a multi-process run reads a sample (index % processes).
"""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlparse

import numpy as np

from ..io import UserError, file_sha256, read_json, write_json

SHARD_SIZE = 1000  # samples per tar file
CHUNK = 64  # images a loader worker decodes and hands over at once
SHUFFLE_BUFFER = 5000  # samples each worker shuffles among, on top of the shard order
LOADER_WORKERS = 8  # decoding processes per training process; fixed: the sample order depends on it


def index_file(prepared_dir: Path, split: str) -> Path:
    return Path(prepared_dir) / f"{split}.shards.json"


def shard_url(path: Path) -> str:
    """The `file:` URL WebDataset reads the shard at `path` from. WebDataset takes a string as a URL,
    and a path that reads as one (`pipe:...`) would run a shell command; it opens the URL's path as
    it stands, so a path it would cut short (at `#` or `?`, or with a tab or line break) is refused."""
    path = Path(path).resolve()
    url = "file://" + str(path)
    if urlparse(url).path != str(path):
        raise UserError(f"{path}: WebDataset cannot read a shard whose path holds '#', '?', a tab or a line break; "
                        "move paths.data to a folder without them")
    return url


def _shard_writer(path: Path):
    """A TarWriter into the file at `path`, opened here: given the path as a string, WebDataset
    would read it as a URL (`pipe:...` runs a shell command)."""
    import webdataset as wds

    return wds.TarWriter(open(path, "wb"), encoder=False)


def _close(writer) -> None:
    writer.close()
    writer.stream.close()  # a TarWriter closes only the files it opened itself


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_split(prepared_dir: Path, split: str, images: Iterable[np.ndarray], labels: np.ndarray, shard_size: int = SHARD_SIZE) -> dict:
    """Write `images` (uint8 H x W x 3 arrays, in index order) with `labels` as shards of
    `split` into the (temporary) folder `prepared_dir`; returns what the index file holds."""
    folder = Path(prepared_dir) / split
    folder.mkdir(parents=True)
    shards, writer, total, sums, squares = [], None, 0, 0.0, 0.0
    for i, image in enumerate(images):
        if i % shard_size == 0:
            if writer is not None:
                _close(writer)
            shards.append({"name": f"shard-{len(shards):06d}.tar", "count": 0})
            writer = _shard_writer(folder / shards[-1]["name"])
        writer.write({"__key__": f"{i:09d}", "jpg": encode_jpeg(image), "cls": str(int(labels[i])).encode(), "index": str(i).encode()})
        shards[-1]["count"] += 1
        pixels = image.reshape(-1, image.shape[-1]).astype(np.float64) / 255
        sums, squares, total = sums + pixels.sum(0), squares + (pixels**2).sum(0), total + len(pixels)
    if writer is not None:
        _close(writer)
    if sum(s["count"] for s in shards) != len(labels):
        raise UserError(f"{split}: {sum(s['count'] for s in shards)} images for {len(labels)} labels")
    for s in shards:
        s["sha256"] = file_sha256(folder / s["name"])
    mean = sums / max(total, 1)
    index = {"split": split, "count": int(len(labels)), "shards": shards, "labels": [int(y) for y in labels],
             "pixel_mean": [float(m) for m in mean], "pixel_std": [float(s) for s in np.sqrt(np.maximum(squares / max(total, 1) - mean**2, 0))]}
    write_json(index_file(prepared_dir, split), index)
    return index


def _collate(samples: list) -> tuple[np.ndarray, np.ndarray]:
    return np.array([s[0] for s in samples], dtype=np.int64), np.stack([s[1] for s in samples])


def _keep_every(world: int, rank: int):
    return lambda sample: int(sample["index"]) % world == rank


def _in(wanted: frozenset):
    return lambda sample: int(sample["index"]) in wanted


class ShardedSplit:
    """A prepared split in shards: `labels` and len() as for an in-memory split; images are
    streamed (`chunks`, `take`, `batches`) and never all held at once."""

    streamed = True

    def __init__(self, prepared_dir: Path, split: str, workers: int = LOADER_WORKERS):
        f = index_file(prepared_dir, split)
        fix = f"delete {Path(prepared_dir)} and run `clusterssl data prepare` again"
        try:
            index = read_json(f)
            self.labels = np.asarray(index["labels"], dtype=np.int64)
            self.pixel_mean, self.pixel_std = index["pixel_mean"], index["pixel_std"]
            files = [Path(prepared_dir) / split / s["name"] for s in index["shards"]]
            for s, path in zip(index["shards"], files):
                if not path.is_file() or file_sha256(path) != s["sha256"]:
                    raise UserError(f"{path}: missing, changed or damaged since it was prepared (SHA-256 differs from {f}); {fix}")
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{f}: not a shard index ({type(exc).__name__}: {str(exc)[:200]}); {fix}") from None
        self.urls = [shard_url(path) for path in files]
        self.split, self.workers = split, workers

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self):
        raise UserError(f"the {self.split} split is prepared in shards (too large to hold in memory): this evaluation "
                        "needs every image at once (raw_pixels does); leave it out of `baselines` for this dataset")

    def _loader(self, urls: list[str], select=None, shuffle_seed: int | None = None, pin: bool = False):
        import torch
        import webdataset as wds

        ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=wds.split_by_worker, empty_check=False)
        if select is not None:
            ds = ds.select(select)  # before decoding: samples of other processes are never decoded
        if shuffle_seed is not None:
            ds = ds.shuffle(SHUFFLE_BUFFER, rng=random.Random(shuffle_seed))
        ds = ds.decode("rgb8").to_tuple("index", "jpg").batched(CHUNK, collation_fn=_collate, partial=True)
        return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=min(self.workers, len(urls)), pin_memory=pin)

    def chunks(self, size: int | None = None, select=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(indices, uint8 N x H x W x C images) of every (or every selected) sample, CHUNK at a
        time (`size` is for the in-memory split's signature) in no particular order: place
        results by index."""
        for idx, x in self._loader(self.urls, select):
            yield idx.numpy(), x.numpy()

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The images at `indices`, in that order (one pass over the shards)."""
        indices = np.asarray(indices, dtype=np.int64)
        wanted = np.unique(indices)
        out = None
        for idx, x in self.chunks(select=_in(frozenset(wanted.tolist()))):
            if out is None:
                out = np.empty((len(wanted), *x.shape[1:]), dtype=np.uint8)
            out[np.searchsorted(wanted, idx)] = x
        if out is None:
            raise UserError(f"{self.split}: none of the {len(wanted)} requested images is in the shards")
        return out[np.searchsorted(wanted, indices)]

    def steps_per_epoch(self, batch: int) -> int:
        """Steps every process can take: process r reads the samples whose index % world == r."""
        return len(self) // batch

    def batches(self, seed: int, epoch: int, rank: int, world: int, local_batch: int, steps: int, skip: int = 0, pin: bool = False):
        """This process's `steps` batches of one epoch as (indices, uint8 N x H x W x C tensors):
        shard order and the workers' shuffle buffers seeded by (seed, epoch, rank); the first
        `skip` batches are read and dropped (resuming within an epoch)."""
        import torch

        order = list(self.urls)
        random.Random(seed * 100_003 + epoch).shuffle(order)
        loader = self._loader(order, _keep_every(world, rank), shuffle_seed=(seed * 100_003 + epoch) * 1_009 + rank, pin=pin)
        pending_idx, pending_x, have, made = [], [], 0, 0
        for idx, x in loader:
            pending_idx.append(idx)
            pending_x.append(x)
            have += len(idx)
            while have >= local_batch and made < steps:
                all_idx, all_x = torch.cat(pending_idx), torch.cat(pending_x)
                if made >= skip:
                    batch_x = all_x[:local_batch]
                    yield all_idx[:local_batch], (batch_x.pin_memory() if pin else batch_x)
                made += 1
                pending_idx, pending_x, have = [all_idx[local_batch:]], [all_x[local_batch:]], have - local_batch
            if made >= steps:
                return
        if made < steps:
            raise UserError(f"{self.split}: the shards gave {made} batches of {local_batch} to process {rank}, "
                            f"{steps} were expected; prepare the dataset again")


def has_shards(prepared_dir: Path, split: str) -> bool:
    return index_file(prepared_dir, split).exists()
