"""Frozen-feature extraction: pooled backbone features of the un-augmented train and test
images, saved once per (run, dataset) and read by every evaluation. Another dataset's images
(transfer) are first resized and channel-converted to the pretraining images' shape.

Each features file records its provenance (a JSON string in the npz, no pickle): method, seed,
dataset, the SHA-256 of the checkpoint it came from (or "raw_pixels") and the params
fingerprint. `checked_features` refuses a file whose arrays or provenance do not hold what an
evaluation asks for, so that bad features stop there instead of scoring at chance."""
from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import paths
from ..augment import grey, normalise
from ..config import fingerprint
from ..data import load_meta, load_prepared
from ..io import UserError, atomic_path, file_sha256, read_json


@torch.no_grad()
def encode(model, split, mean, std, device, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (and cluster-head assignments) of every image of `split` (in memory or in
    shards), rows in index order."""
    encoder = model.eval_encoder().eval()
    feats, clusters = None, None
    for idx, images in split.chunks(batch_size):
        x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255)
        x = normalise(x, mean, std)
        h = encoder(x)
        logits = model.cluster_logits(h)
        if feats is None:
            feats = np.empty((len(split), h.shape[1]), dtype=np.float32)
            clusters = None if logits is None else np.empty(len(split), dtype=np.int64)
        feats[idx] = h.float().cpu().numpy()
        if logits is not None:
            clusters[idx] = logits.argmax(1).cpu().numpy()
    return feats, clusters


def raw_pixel_features(images: np.ndarray) -> np.ndarray:
    """The no-learning baseline: pixels scaled to [0, 1], flattened."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


SHARDED_RAW_SIDE = 32  # sharded datasets' raw pixels are first downsampled: 224 x 224 x 3 = 150k values per image would not fit


def raw_features(split, indices: np.ndarray | None = None) -> np.ndarray:
    """raw_pixel_features of a split (or of its images at `indices`); in shards: at 32 x 32."""
    if not split.streamed:
        return raw_pixel_features(split.images if indices is None else split.images[indices])
    shrink = lambda x: raw_pixel_features(match_shape(x, (SHARDED_RAW_SIDE, SHARDED_RAW_SIDE, x.shape[3])))
    if indices is not None:
        return shrink(split.take(indices))
    out = np.empty((len(split), SHARDED_RAW_SIDE * SHARDED_RAW_SIDE * 3), dtype=np.float32)
    for idx, x in split.chunks():
        out[idx] = shrink(x)
    return out


def match_shape(images: np.ndarray, shape) -> np.ndarray:
    """uint8 NHWC `images` as (H, W, C) = `shape`: bilinear (antialiased) resize, luma for
    colour -> grey, replicated channels for grey -> colour."""
    h, w, c = shape
    if images.shape[1:] == tuple(shape):
        return images
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    if x.shape[1] != c:
        x = grey(x) if c == 1 else grey(x).expand(-1, c, -1, -1)
    if x.shape[2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def embed(params: dict, method: str, seed: int, dataset: str | None = None, threads: int | None = None) -> Path:
    """Features of `dataset` (default: the pretraining dataset) under `method`'s encoder, with
    the provenance an evaluation checks them by (`checked_features`)."""
    from ..runtime import pretrain_config  # imported here: it pulls in timm

    if threads:
        torch.set_num_threads(threads)
    dataset = dataset or params["dataset"]
    prepared = paths.prepared_dir(params, dataset)
    train = load_prepared(prepared, "train", params["eval"]["max_train"])
    test = load_prepared(prepared, "test")
    if dataset != params["dataset"]:
        shape = load_meta(paths.prepared_dir(params, params["dataset"]))["image_shape"]
        train.images, test.images = match_shape(train.images, shape), match_shape(test.images, shape)
    out = {"train_labels": train.labels, "test_labels": test.labels}
    if method == paths.RAW_PIXELS:
        out["train_features"], out["test_features"] = raw_features(train), raw_features(test)
        made_by, settings = paths.RAW_PIXELS, {"dataset": params["dataset"], "eval.max_train": params["eval"]["max_train"]}
        fix = "prepare the data again"
    else:
        out.update(trained_features(params, method, seed, train, test))
        checkpoint = paths.run_files(params, method, seed)[0]
        # settings: the run's config and seed, whose fingerprint train.py gives the run
        made_by, settings = file_sha256(checkpoint), {**pretrain_config(params, method), "seed": seed}
        fix = f"{checkpoint} gives them (its run diverged?); run `clusterssl pretrain --method {method} --seed {seed}` again"
    dest = paths.features_file(params, method, seed, dataset)
    source = {"method": method, "seed": seed, "dataset": dataset, "pretrained_on": params["dataset"], "checkpoint_sha256": made_by,
              "params_fingerprint": fingerprint(settings), "num_classes": len(load_meta(prepared)["classes"])}
    check_arrays(dest, out, source["num_classes"], fix)  # NaN features stop here, not as a chance-level score later
    out["provenance"] = np.array(json.dumps(source, sort_keys=True))  # a 0-d unicode array: loads without pickle
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **out)
    return dest


def trained_features(params: dict, method: str, seed: int, train, test) -> dict:
    """The frozen encoder's features of `train` and `test` (and its cluster head's assignments,
    where it has one)."""
    from ..runtime import load_trained, use_device  # imported here: it pulls in timm

    device = use_device(params["pretrain"]["device"])
    model, state = load_trained(params, method, seed, device)
    mean, std = state["mean"].to(device), state["std"].to(device)
    bs = params["eval"]["batch_size"]
    out = {}
    out["train_features"], tr_c = encode(model, train, mean, std, device, bs)
    out["test_features"], te_c = encode(model, test, mean, std, device, bs)
    if te_c is not None:
        out["train_head_clusters"], out["test_head_clusters"] = tr_c, te_c
    return out


# --- reading features back, checked ----------------------------------------------------------------
FEATURE_ARRAYS = ("train_features", "train_labels", "test_features", "test_labels")
PROVENANCE_KEYS = ("method", "seed", "dataset", "pretrained_on", "checkpoint_sha256", "params_fingerprint", "num_classes")
CHUNK_ROWS = 1 << 14  # rows checked for NaN at once: the mask of a whole ImageNet feature matrix would be gigabytes


def embed_command(params: dict, method: str, seed: int, dataset: str) -> str:
    """The command that writes the features of (method, seed, dataset) again."""
    target = "" if dataset == params["dataset"] else f" --dataset {dataset}"
    return f"clusterssl embed --method {method} --seed {seed}{target}"


def load_features(path: Path, fix: str) -> dict:
    """The arrays of a features file, checked: a readable npz without pickles, every array the
    evaluations read, 2-D finite float features, 1-D integer labels (one per row, each a class),
    and its provenance (a dict, under "provenance"). `fix` is what the messages tell to run."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: features not found; run `{fix}` first")
    f = _read_npz(path, fix)
    if "provenance" not in f:
        raise UserError(f"{path}: records no provenance (written by an older clusterssl); re-run `{fix}`")
    f["provenance"] = _provenance(path, f["provenance"], fix)
    check_arrays(path, f, f["provenance"]["num_classes"], f"re-run `{fix}`")
    return f


def _read_npz(path: Path, fix: str) -> dict:
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(f"one {z.dtype} array, not an npz archive")
        with z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, zlib.error) as exc:
        # truncated (BadZipFile), object arrays (ValueError: they would need pickle), other files
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UserError(f"{path}: not a readable features file ({type(exc).__name__}: {reason}); delete it and re-run `{fix}`") from None


def _provenance(path: Path, stored: np.ndarray, fix: str) -> dict:
    try:
        source = json.loads(str(stored[()])) if stored.dtype.kind == "U" and stored.ndim == 0 else None
    except json.JSONDecodeError:
        source = None
    missing = [k for k in PROVENANCE_KEYS if k not in source] if isinstance(source, dict) else list(PROVENANCE_KEYS)
    if missing:
        raise UserError(f"{path}: its provenance is unreadable or lacks {', '.join(missing)}; delete it and re-run `{fix}`")
    return source


def check_arrays(path: Path, f: dict, num_classes: int, fix: str) -> None:
    """What every evaluation assumes of features, one message naming `path` where it does not hold."""
    missing = [k for k in FEATURE_ARRAYS if k not in f]
    if missing:
        raise UserError(f"{path}: has no {', '.join(missing)}; {fix}")
    for split in ("train", "test"):
        x, y, clusters = f[f"{split}_features"], f[f"{split}_labels"], f.get(f"{split}_head_clusters")
        if x.ndim != 2 or x.dtype.kind != "f":
            raise UserError(f"{path}: {split}_features is a {x.dtype} array of shape {x.shape}, not 2-D float; {fix}")
        for name, a in ((f"{split}_labels", y), (f"{split}_head_clusters", clusters)):
            if a is not None and (a.ndim != 1 or a.dtype.kind not in "iu" or len(a) != len(x)):
                raise UserError(f"{path}: {name} is a {a.dtype} array of shape {a.shape}, not {len(x)} integers "
                                f"(one per row of {split}_features); {fix}")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise UserError(f"{path}: {split}_labels hold {y.min() if y.min() < 0 else y.max()}, outside 0..{num_classes - 1} "
                            f"({num_classes} classes); {fix}")
        bad = np.concatenate([~np.isfinite(x[i : i + CHUNK_ROWS]).all(1) for i in range(0, len(x), CHUNK_ROWS)] or [np.zeros(0, bool)])
        if bad.any():
            raise UserError(f"{path}: {split}_features hold NaN or infinite values in {int(bad.sum()):,} of {len(x):,} rows "
                            f"(the first: row {int(np.flatnonzero(bad)[0])}); {fix}")
    if f["train_features"].shape[1] != f["test_features"].shape[1]:
        raise UserError(f"{path}: train_features have {f['train_features'].shape[1]} columns, test_features "
                        f"{f['test_features'].shape[1]}; {fix}")


def checked_features(params: dict, method: str, seed: int, dataset: str) -> tuple[Path, dict]:
    """The features file of (method, seed, dataset) and its arrays, refused unless its provenance
    says it holds what was asked for: that method, seed and dataset, from the current checkpoint
    (trained methods), and as many rows as the prepared splits give (where they are here)."""
    path = paths.features_file(params, method, seed, dataset)
    fix = embed_command(params, method, seed, dataset)
    f = load_features(path, fix)
    held = f["provenance"]
    expected = {"method": method, "seed": seed, "dataset": dataset, "pretrained_on": params["dataset"]}
    if any(held[k] != v for k, v in expected.items()):
        raise UserError(f"{path}: holds the features of {held['method']} seed {held['seed']} on {held['dataset']} (pretrained on "
                        f"{held['pretrained_on']}), not {method} seed {seed} on {dataset} (pretrained on {params['dataset']}); "
                        f"re-run `{fix}`")
    if method != paths.RAW_PIXELS:
        _check_checkpoint(params, method, seed, path, held["checkpoint_sha256"], fix)
    _check_rows(params, dataset, path, f, fix)
    return path, f


def _check_checkpoint(params: dict, method: str, seed: int, path: Path, made_by: str, fix: str) -> None:
    checkpoint = paths.run_files(params, method, seed)[0]
    if not checkpoint.exists():
        raise UserError(f"{checkpoint}: not found, so the features {path} cannot be checked against it; "
                        f"run `clusterssl pretrain --method {method} --seed {seed}`, then `{fix}`")
    current = file_sha256(checkpoint)
    if current != made_by:
        raise UserError(f"{path}: made from a checkpoint with SHA-256 {made_by[:12]}…, but {checkpoint} now has "
                        f"{current[:12]}… (it changed since they were embedded); re-run `{fix}`")


def _check_rows(params: dict, dataset: str, path: Path, f: dict, fix: str) -> None:
    """Rows against the prepared splits' sizes in meta.json, where the prepared data is here."""
    meta_file = paths.prepared_dir(params, dataset) / "meta.json"
    if not meta_file.exists():
        return
    meta, cap = read_json(meta_file), params["eval"]["max_train"]
    expected = {"train": meta["num_train"] if cap is None else min(cap, meta["num_train"]), "test": meta["num_test"]}
    for split, rows in expected.items():
        if len(f[f"{split}_labels"]) != rows:
            raise UserError(f"{path}: holds {len(f[f'{split}_labels'])} {split} rows, but the prepared {split} split "
                            f"({meta_file}, eval.max_train {cap}) gives {rows}; re-run `{fix}`")
