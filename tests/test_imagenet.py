"""ImageNet-100 and ImageNet-1k from generated ImageFolders of JPEGs, through the sharded path: fetch (the
class list checked) -> prepare (WebDataset shards, decoded in loader workers) -> one epoch of
pretraining on streamed batches -> embedding -> evaluation, raw pixels included."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from clusterssl import data, paths
from clusterssl.config import validate
from clusterssl.data import imagenet, shards
from clusterssl.data.splits import write_split
from clusterssl.evaluate.semisup import semisup
from clusterssl.evaluate.features import embed
from clusterssl.evaluate.run import evaluate
from clusterssl.io import UserError
from clusterssl.train import pretrain
from conftest import PARAMS_YAML, preset_params

SIDE = 64  # generated images are resized to imagenet.SIZE by prepare; kept small here for speed


IN100 = imagenet.IMAGENET100


def make_imagefolder(root, per_class=(2, 1), classes=IN100.CLASSES):
    """train/ and val/ with one folder per WordNet id; each image a flat colour (its class's),
    odd sizes so that prepare's resize and centre crop are exercised."""
    rng = np.random.default_rng(0)
    colours = {}
    for folder, n in zip(("train", "val"), per_class):
        for label, wnid in enumerate(classes):
            (root / folder / wnid).mkdir(parents=True)
            colours[wnid] = rng.integers(30, 225, 3, dtype=np.uint8)
            for i in range(n):
                h, w = (40, 56) if i % 2 else (56, 40)
                Image.fromarray(np.broadcast_to(colours[wnid], (h, w, 3)).copy()).save(root / folder / wnid / f"{wnid}_{i}.JPEG", quality=95)
    (root / "train" / "n99999999").mkdir()  # a folder of no listed class: ignored
    return colours


@pytest.fixture
def small_size(monkeypatch):
    monkeypatch.setattr(imagenet, "SIZE", SIDE)


def params_for(tmp_path):
    params = yaml.safe_load(PARAMS_YAML.read_text())
    params.update(dataset="imagenet100", methods=["carl"])
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    params["backbone"].update(channels=[8, 8, 8, 8])
    params["pretrain"].update(epochs=1, batch_size=32, channels_last=False)
    params["method_params"]["carl"].update(projector_hidden=16, projector_out=8, num_prototypes=20, partition_size=10)
    params["eval"]["linear"].update(epochs=2)
    params["eval"]["semisup"].update(fractions=[0.5], steps=2)
    params["eval"]["transfer"]["datasets"] = []
    validate(params)
    return params


def test_the_class_lists_are_cmcs_and_ilsvrc_2012s():
    text = "\n".join(imagenet.CMC_CLASSES) + "\n"
    assert hashlib.sha256(text.encode()).hexdigest() == imagenet.CMC_CLASSES_SHA256 == imagenet.list_hash(imagenet.CMC_CLASSES)
    assert len(set(IN100.CLASSES)) == 100 and all(c.startswith("n") and len(c) == 9 for c in IN100.CLASSES)
    in1k = imagenet.IMAGENET.CLASSES
    assert len(set(in1k)) == 1000 and list(in1k) == sorted(in1k) and in1k[0] == "n01440764" and in1k[-1] == "n15075141"
    assert set(IN100.CLASSES) < set(in1k)  # CMC's classes are ImageNet-1k's


def test_a_changed_1k_class_list_is_refused(monkeypatch):
    monkeypatch.setattr(imagenet, "IMAGENET_1K_SHA256", "0" * 64)
    with pytest.raises(UserError, match="imagenet_synsets.txt: not ImageNet-1k's 1000 WordNet ids.*reinstall timm"):
        imagenet.imagenet_1k_classes()


def test_imagenet_1k_fetch_prepare_pretrain_evaluate_on_a_generated_imagefolder(tmp_path, monkeypatch, small_size):
    """All 1000 classes, one image per class and split: the same sharded path as ImageNet-100."""
    make_imagefolder(tmp_path / "imagenet", per_class=(1, 1), classes=imagenet.IMAGENET.CLASSES)
    monkeypatch.setenv(imagenet.DIR_ENV, str(tmp_path / "imagenet"))
    params = params_for(tmp_path)
    params["dataset"] = "imagenet"
    validate(params)
    raw, prepared = paths.raw_dir(params, "imagenet"), paths.prepared_dir(params, "imagenet")
    data.fetch("imagenet", raw)
    data.prepare("imagenet", raw, prepared)
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["splits"] == {"train": 1000, "test": 1000} and len(meta["classes"]) == 1000
    assert np.bincount(data.load_prepared(prepared, "test").labels).tolist() == [1] * 1000
    pretrain(params, "carl", 0, progress=False)
    embed(params, "carl", 0)
    for protocol in ("linear", "knn"):
        result = json.loads(evaluate(params, protocol, "carl", 0).read_text())
        assert result["num_test"] == 1000
    with pytest.raises(UserError, match="1 of ImageNet-1k's 1000 class folders are missing"):
        (tmp_path / "imagenet" / "val" / imagenet.IMAGENET.CLASSES[7] / f"{imagenet.IMAGENET.CLASSES[7]}_0.JPEG").unlink()
        (tmp_path / "imagenet" / "val" / imagenet.IMAGENET.CLASSES[7]).rmdir()
        data.fetch("imagenet", tmp_path / "raw2")
    assert not (tmp_path / "raw2").exists()


def test_fetch_prepare_pretrain_evaluate_on_a_generated_imagefolder(tmp_path, monkeypatch, small_size):
    colours = make_imagefolder(tmp_path / "imagenet")
    monkeypatch.setenv(imagenet.DIR_ENV, str(tmp_path / "imagenet"))
    params = params_for(tmp_path)
    raw, prepared = paths.raw_dir(params, "imagenet100"), paths.prepared_dir(params, "imagenet100")
    data.fetch("imagenet100", raw)
    data.prepare("imagenet100", raw, prepared)
    assert all(p.exists() for p in paths.prepared_files(params, "imagenet100"))
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["splits"] == {"train": 200, "test": 100} and meta["image_shape"] == [SIDE, SIDE, 3]
    assert meta["classes"] == sorted(imagenet.CMC_CLASSES)

    train, test = data.load_prepared(prepared, "train"), data.load_prepared(prepared, "test")
    assert train.streamed and len(train) == 200 and np.bincount(train.labels).tolist() == [2] * 100
    # every image decodes to its class's colour (JPEG-close), wherever the shards put it
    seen = np.zeros(len(test), dtype=bool)
    for idx, x in test.chunks():
        assert x.shape[1:] == (SIDE, SIDE, 3) and x.dtype == np.uint8
        want = np.stack([colours[IN100.CLASSES[y]] for y in test.labels[idx]]).astype(int)
        assert np.abs(x.reshape(len(x), -1, 3).mean(1) - want).max() < 4
        seen[idx] = True
    assert seen.all()
    some = np.array([5, 0, 199, 5])
    np.testing.assert_array_equal(train.take(some)[0], train.take(some)[3])
    with pytest.raises(UserError, match="in shards"):
        train.images
    # the shards mix classes: the first 20 samples written are not one class
    assert len(set(train.labels[:20].tolist())) > 5

    run = pretrain(params, "carl", 0, progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["train_images"] == 200
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "online_knn20_top1" in history[0]
    for method in ("carl", paths.RAW_PIXELS):
        embed(params, method, 0)
        for protocol in ("linear", "knn", "cluster"):
            result = json.loads(evaluate(params, protocol, method, 0).read_text())
            assert result["num_test"] == 100
    write_split(train.labels, 0.5, 0, paths.split_file(params, "imagenet100", 0.5, 0))
    for method in ("carl", paths.SCRATCH, paths.RAW_PIXELS):  # fine-tuning reads its subset from the shards
        result = json.loads(semisup(params, method, 0, 0.5).read_text())
        assert result["num_train"] == 100 and result["num_test"] == 100
    features = np.load(paths.features_file(params, paths.RAW_PIXELS, 0))
    assert features["test_features"].shape == (100, 32 * 32 * 3)  # downsampled raw pixels
    # the encoder's features sit in index order: identical images give identical rows
    f = np.load(paths.features_file(params, "carl", 0))["test_features"]
    by_class = {}
    for row, y in zip(f, test.labels):
        by_class.setdefault(int(y), []).append(row)
    assert all(len(v) == 1 for v in by_class.values())


def test_each_process_reads_its_own_part_of_every_epoch(tmp_path, small_size):
    rng = np.random.default_rng(1)
    colours = rng.integers(30, 225, (50, 1, 1, 3), dtype=np.uint8)
    images = np.broadcast_to(colours, (50, 8, 8, 3)).copy()  # flat colours: JPEG keeps them
    (tmp_path / "p").mkdir()
    shards.write_split(tmp_path / "p", "train", iter(images), np.arange(50) % 5, shard_size=7)
    split = shards.ShardedSplit(tmp_path / "p", "train", workers=2)
    steps = split.steps_per_epoch(10)
    parts = [[idx for idx, x in split.batches(3, 0, rank, 2, 5, steps)] for rank in (0, 1)]
    got = [torch.cat(p).numpy() for p in parts]
    assert steps == 5 and all(len(g) == 25 for g in got)
    assert set(got[0]) | set(got[1]) == set(range(50)) and not set(got[0]) & set(got[1])
    assert all(i % 2 == r for r, g in enumerate(got) for i in g)
    again = torch.cat([idx for idx, _ in split.batches(3, 0, 0, 2, 5, steps)]).numpy()
    np.testing.assert_array_equal(again, got[0])  # seeded: the same order again
    other = torch.cat([idx for idx, _ in split.batches(3, 1, 0, 2, 5, steps)]).numpy()
    assert not np.array_equal(other, got[0])  # another epoch, another order
    resumed = torch.cat([idx for idx, _ in split.batches(3, 0, 0, 2, 5, steps, skip=2)]).numpy()
    np.testing.assert_array_equal(resumed, got[0][10:])  # resuming within an epoch skips what was trained
    for idx, x in split.batches(3, 0, 1, 2, 5, steps):
        np.testing.assert_allclose(x.numpy().astype(int), images[idx.numpy()].astype(int), atol=4)  # JPEG


def test_shards_under_a_folder_named_like_a_command_are_read_and_run_nothing(tmp_path, monkeypatch):
    """WebDataset reads a string as a URL: a relative data folder that reads as a `pipe:` URL, with a
    space and `$(...)` in its name, is written and read as a folder, and runs nothing."""
    monkeypatch.chdir(tmp_path)
    prepared = Path("pipe:touch PWNED;cat") / "my shards $(touch PWNED)"
    prepared.mkdir(parents=True)
    colours = np.random.default_rng(2).integers(30, 225, (12, 1, 1, 3), dtype=np.uint8)
    images = np.broadcast_to(colours, (12, 8, 8, 3)).copy()  # flat colours: JPEG keeps them
    shards.write_split(prepared, "train", iter(images), np.arange(12) % 3, shard_size=5)
    split = shards.ShardedSplit(prepared, "train", workers=1)  # read in a loader worker process
    assert all(url.startswith(f"file://{tmp_path}/pipe:touch PWNED;cat/my shards $(touch PWNED)/train/") for url in split.urls)
    got = dict(pair for idx, x in split.chunks() for pair in zip(idx.tolist(), x))
    assert sorted(got) == list(range(12))
    np.testing.assert_allclose(np.stack([got[i] for i in range(12)]).astype(int), images.astype(int), atol=4)
    assert not list(tmp_path.rglob("PWNED")), "a shard path was run as a shell command"
    with pytest.raises(UserError, match="'#', '\\?'"):  # WebDataset would cut the URL short there
        shards.shard_url(tmp_path / "C#" / "shard-000000.tar")


def test_a_missing_class_folder_is_named(tmp_path, monkeypatch):
    make_imagefolder(tmp_path / "imagenet", per_class=(1, 1), classes=IN100.CLASSES[1:])
    monkeypatch.setenv(imagenet.DIR_ENV, str(tmp_path / "imagenet"))
    with pytest.raises(UserError, match=f"1 of ImageNet-100's 100 class folders are missing \\(e.g. {IN100.CLASSES[0]}"):
        data.fetch("imagenet100", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_without_the_imagenet_folder_the_error_says_which_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(imagenet.DIR_ENV, raising=False)
    with pytest.raises(UserError, match=imagenet.DIR_ENV):
        data.fetch("imagenet100", tmp_path / "raw")


def test_a_damaged_shard_or_image_is_refused(tmp_path, monkeypatch, small_size):
    make_imagefolder(tmp_path / "imagenet", per_class=(1, 1))
    monkeypatch.setenv(imagenet.DIR_ENV, str(tmp_path / "imagenet"))
    data.fetch("imagenet100", tmp_path / "raw")
    data.prepare("imagenet100", tmp_path / "raw", tmp_path / "prepared")
    shard = next((tmp_path / "prepared" / "train").glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[:-2000])
    with pytest.raises(UserError, match="SHA-256 differs"):
        data.load_prepared(tmp_path / "prepared", "train")
    bad = next((tmp_path / "imagenet" / "val" / IN100.CLASSES[3]).iterdir())
    bad.write_bytes(b"not a jpeg")
    data.fetch("imagenet100", tmp_path / "raw2")
    with pytest.raises(UserError, match="cannot be read as an image"):
        data.prepare("imagenet100", tmp_path / "raw2", tmp_path / "prepared2")
    assert not (tmp_path / "prepared2").exists()


def test_the_paper_preset_runs_on_a_generated_imagefolder_with_only_its_size_shrunk(tmp_path, monkeypatch, small_size):
    make_imagefolder(tmp_path / "imagenet", per_class=(2, 1))
    monkeypatch.setenv(imagenet.DIR_ENV, str(tmp_path / "imagenet"))
    params = preset_params("paper-imagenet100")
    validate(params)
    # the size of the run shrinks; every recipe, protocol and split setting stays the preset's
    params.update(methods=["simclr"], seeds=[0])
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    params["backbone"]["channels"] = [8, 8, 8, 8]
    params["pretrain"].update(epochs=1, batch_size=32, device="cpu", warmup_epochs=0, processes=1)
    params["eval"]["linear"]["epochs"] = 2
    validate(params)
    data.fetch("imagenet100", paths.raw_dir(params, "imagenet100"))
    data.prepare("imagenet100", paths.raw_dir(params, "imagenet100"), paths.prepared_dir(params, "imagenet100"))
    pretrain(params, "simclr", 0, progress=False)
    embed(params, "simclr", 0)
    cluster = json.loads(evaluate(params, "cluster", "simclr", 0).read_text())
    assert cluster["settings"]["split"] == "train+test"
    assert sum(map(sum, cluster["metrics"]["kmeans"]["confusion"])) == 300


def test_two_processes_train_on_the_shards_through_the_pretrain_verb(tmp_path, monkeypatch, small_size):
    make_imagefolder(tmp_path / "imagenet", per_class=(2, 1))
    monkeypatch.setenv(imagenet.DIR_ENV, str(tmp_path / "imagenet"))
    params = params_for(tmp_path)
    params["pretrain"]["processes"] = 2
    data.fetch("imagenet100", paths.raw_dir(params, "imagenet100"))
    data.prepare("imagenet100", paths.raw_dir(params, "imagenet100"), paths.prepared_dir(params, "imagenet100"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "-m", "clusterssl.cli", "--params", str(tmp_path / "params.yaml"), "pretrain", "--method", "carl",
                           "--seed", "0", "--threads", "1", "--no-progress"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = paths.run_dir(params, "carl", 0)
    config = json.loads((run / "config.json").read_text())
    assert config["pretrain"]["processes"] == 2 and config["train_images"] == 200
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 2
