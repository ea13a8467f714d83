"""The paper datasets (CIFAR-10/100/100-20, STL-10) on small archives generated in each official
format: fetch (from a mirror, MD5 checked) -> prepare (pixels and labels land where the format
says) -> one epoch of pretraining -> evaluation. Crafted or damaged archives are refused."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
import yaml

from clusterssl import data, paths
from clusterssl.config import validate
from clusterssl.data import cifar, stl10
from clusterssl.data.download import file_md5
from clusterssl.evaluate.features import embed
from clusterssl.evaluate.run import evaluate
from clusterssl.io import UserError
from clusterssl.train import pretrain
from conftest import PARAMS_YAML, hidden_entries, preset_params

RNG = np.random.default_rng(0)


def _tar_gz(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)  # as the official batches: bytes keys, protocol-2 arrays


def make_cifar(mirror, source: cifar.Cifar, per_batch=8, test=20):
    """An archive in the official layout; returns its arrays (NHWC images, labels) per split."""
    fine, coarse = 100, 20
    arrays, files = {}, {}

    def batch(n):
        x = RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        if source.name == "cifar10":
            labels = {b"labels": RNG.integers(0, 10, n).tolist()}
        else:
            f = RNG.integers(0, fine, n)
            labels = {b"fine_labels": f.tolist(), b"coarse_labels": (f % coarse).tolist()}
        return x, labels

    splits = {"train": [], "test": []}
    for name in (*source.train_batches, source.test_batch):
        x, labels = batch(per_batch if name != source.test_batch else test)
        files[f"{source.folder}/{name}"] = _pickle({b"data": x.reshape(len(x), -1), **labels, b"batch_label": b"x"})
        key = "labels" if source.name == "cifar10" else ("coarse_labels" if source.name == "cifar100_20" else "fine_labels")
        splits["test" if name == source.test_batch else "train"].append((x.transpose(0, 2, 3, 1), np.array(labels[key.encode()])))
    if source.name == "cifar10":
        files[f"{source.folder}/batches.meta"] = _pickle({b"label_names": [f"c{i}".encode() for i in range(10)]})
    else:
        files[f"{source.folder}/meta"] = _pickle({b"fine_label_names": [f"f{i}".encode() for i in range(fine)],
                                                  b"coarse_label_names": [f"s{i}".encode() for i in range(coarse)]})
    folder = mirror / source.mirror_name
    folder.mkdir(parents=True, exist_ok=True)
    archive = _tar_gz(folder / source.archive, files)
    for split, parts in splits.items():
        arrays[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return archive, arrays


def make_stl10(mirror, n_train=20, n_test=10, n_unlabeled=30):
    arrays, files = {}, {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        x = RNG.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        # the official layout: per image, channels, then columns, then rows (column-major)
        files[f"stl10_binary/{split}_X.bin"] = x.transpose(0, 3, 2, 1).tobytes()
        y = RNG.integers(0, 10, n) if split != "unlabeled" else np.full(n, -1)
        if split != "unlabeled":
            files[f"stl10_binary/{split}_y.bin"] = (y + 1).astype(np.uint8).tobytes()
        arrays[split] = (x, y)
    files["stl10_binary/class_names.txt"] = "\n".join(stl10.CLASSES).encode()
    (mirror / "stl10").mkdir(parents=True, exist_ok=True)
    return _tar_gz(mirror / "stl10" / stl10.ARCHIVE, files), arrays


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERSSL_DATA_MIRROR", str(tmp_path / "mirror"))
    for name in ("cifar10", "cifar100", "stl10"):  # the official URLs must not be tried
        monkeypatch.setenv(f"CLUSTERSSL_{name.upper()}_URL", "http://127.0.0.1:9/")
    return tmp_path / "mirror"


def generated(name, mirror, monkeypatch):
    """Generate `name`'s archive in the mirror, and trust its MD5 in place of the official one."""
    if name == "stl10":
        archive, arrays = make_stl10(mirror)
        monkeypatch.setattr(stl10, "MD5", file_md5(archive))
    else:
        archive, arrays = make_cifar(mirror, data.SOURCES[name])
        monkeypatch.setitem(data.SOURCES, name, dataclasses.replace(data.SOURCES[name], md5=file_md5(archive)))
    return arrays


def params_for(tmp_path, name):
    params = yaml.safe_load(PARAMS_YAML.read_text())
    params.update(dataset=name, methods=["simclr"])
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    params["backbone"].update(channels=[8, 8, 8, 8])
    params["pretrain"].update(epochs=1, batch_size=8, channels_last=False)
    params["method_params"]["simclr"].update(projector_hidden=16, projector_out=8)
    params["eval"]["linear"].update(epochs=2)
    params["eval"]["transfer"]["datasets"] = []
    if name == "stl10":
        params["data"]["extra_pretrain_splits"] = ["unlabeled"]
    validate(params)
    return params


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "cifar100_20", "stl10"])
def test_fetch_prepare_pretrain_evaluate_on_a_generated_archive(tmp_path, mirror, monkeypatch, name):
    arrays = generated(name, mirror, monkeypatch)
    params = params_for(tmp_path, name)
    raw, prepared = paths.raw_dir(params, name), paths.prepared_dir(params, name)
    data.fetch(name, raw)
    data.prepare(name, raw, prepared)

    meta = json.loads((prepared / "meta.json").read_text())
    for split, (x, y) in arrays.items():
        got = data.load_prepared(prepared, split)
        np.testing.assert_array_equal(got.images, x)  # NHWC, channels and axes in the right place
        np.testing.assert_array_equal(got.labels, y)
        assert meta["splits"][split] == len(y)
    expected_classes = {"cifar10": 10, "cifar100": 100, "cifar100_20": 20, "stl10": 10}[name]
    assert len(meta["classes"]) == expected_classes and meta["image_shape"] == list(x.shape[1:])

    run = pretrain(params, "simclr", 0, progress=False)
    config = json.loads((run / "config.json").read_text())
    train_total = len(arrays["train"][1]) + (len(arrays["unlabeled"][1]) if name == "stl10" else 0)
    assert config["train_images"] == train_total  # STL-10 pretrains on train + unlabeled
    embed(params, "simclr", 0)
    for protocol in ("linear", "knn"):
        result = json.loads(evaluate(params, protocol, "simclr", 0).read_text())
        assert result["num_test"] == len(arrays["test"][1])


def test_cifar100_20_shares_cifar100s_archive(tmp_path, mirror, monkeypatch):
    generated("cifar100", mirror, monkeypatch)
    arrays = generated("cifar100_20", mirror, monkeypatch)  # the same file, written again
    params = params_for(tmp_path, "cifar100_20")
    raw = data.fetch("cifar100_20", paths.raw_dir(params, "cifar100_20"))
    data.prepare("cifar100_20", raw, paths.prepared_dir(params, "cifar100_20"))
    labels = data.load_prepared(paths.prepared_dir(params, "cifar100_20"), "train").labels
    assert labels.max() < 20 and np.array_equal(labels, arrays["train"][1])


def test_a_wrong_md5_is_refused_and_nothing_is_kept(tmp_path, mirror, monkeypatch):
    make_cifar(mirror, cifar.CIFAR10)  # the official MD5 stays: the generated archive is not it
    raw = tmp_path / "data/raw/cifar10"
    with pytest.raises(UserError, match=r"cifar-10-python.tar.gz: checksum mismatch \(MD5 .*expected c58f3010.*fetch again"):
        data.fetch("cifar10", raw)
    assert not raw.exists() and hidden_entries(raw.parent) == []


def test_offline_with_no_mirror_names_the_file_and_the_mirror_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("CLUSTERSSL_DATA_MIRROR", raising=False)
    monkeypatch.setenv("CLUSTERSSL_STL10_URL", "http://127.0.0.1:9/")
    with pytest.raises(UserError, match=r"stl10: file stl10_binary.tar.gz not found .*CLUSTERSSL_DATA_MIRROR"):
        data.fetch("stl10", tmp_path / "raw")


def test_a_tar_member_escaping_the_raw_folder_is_refused(tmp_path, mirror, monkeypatch):
    (mirror / "cifar10").mkdir(parents=True)
    archive = _tar_gz(mirror / "cifar10" / cifar.CIFAR10.archive, {"cifar-10-batches-py/data_batch_1": b"x", "../../escaped": b"y"})
    monkeypatch.setitem(data.SOURCES, "cifar10", dataclasses.replace(cifar.CIFAR10, md5=file_md5(archive)))
    raw = tmp_path / "data/raw/cifar10"
    with pytest.raises(UserError, match=r"member '../../escaped' is refused.*nothing was extracted"):
        data.fetch("cifar10", raw)
    assert not raw.exists() and not (tmp_path / "escaped").exists() and not (tmp_path / "data/escaped").exists()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_cifar_batch_runs_no_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": _RunsCode(), "labels": [0]}))
    with pytest.raises(UserError, match=r"data_batch_1: not a CIFAR batch .*refused to load posix.system"):
        cifar.read_batch(batch)
    assert not (tmp_path / "pwned").exists()


def test_a_truncated_stl10_binary_is_refused(tmp_path):
    f = tmp_path / "train_X.bin"
    f.write_bytes(b"\0" * (3 * 96 * 96 + 5))
    with pytest.raises(UserError, match=r"train_X.bin: .* not a whole number of 3x96x96 images"):
        stl10.read_images(f)


def test_an_extra_split_the_dataset_lacks_is_refused_before_training(tmp_path, monkeypatch):
    params = params_for(tmp_path, "cifar10")
    params.update(dataset="digits")
    params["data"]["extra_pretrain_splits"] = ["unlabeled"]
    data.fetch("digits", paths.raw_dir(params, "digits"))
    data.prepare("digits", paths.raw_dir(params, "digits"), paths.prepared_dir(params, "digits"))
    with pytest.raises(UserError, match=r"data.extra_pretrain_splits: 'unlabeled' is not an extra split of digits \(it has: none\)"):
        pretrain(params, "simclr", 0, progress=False)
    assert not paths.run_dir(params, "simclr", 0).exists()


@pytest.mark.parametrize("preset, methods", [("paper-cifar10", ["byol", "cc"]), ("paper-cifar100", ["swav", "moco_v2"]),
                                             ("paper-stl10", ["carl", "simclr"])])
def test_a_paper_preset_runs_on_its_generated_dataset_with_only_its_size_shrunk(tmp_path, mirror, monkeypatch, preset, methods):
    params = preset_params(preset)
    validate(params)
    name = params["dataset"]
    arrays = generated(name, mirror, monkeypatch)
    # the size of the run shrinks; every recipe, protocol and split setting stays the preset's
    params.update(methods=methods, seeds=[0])
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    params["backbone"]["channels"] = [8, 8, 8, 8]
    params["pretrain"].update(epochs=1, batch_size=8, device="cpu", warmup_epochs=0)
    params["eval"]["linear"]["epochs"] = 2
    validate(params)
    data.fetch(name, paths.raw_dir(params, name))
    data.prepare(name, paths.raw_dir(params, name), paths.prepared_dir(params, name))
    for method in methods:
        pretrain(params, method, 0, progress=False)
        embed(params, method, 0)
        cluster = json.loads(evaluate(params, "cluster", method, 0).read_text())
        assert cluster["settings"]["split"] == "train+test"
        assert sum(map(sum, cluster["metrics"]["kmeans"]["confusion"])) == len(arrays["train"][1]) + len(arrays["test"][1])


def test_every_preset_validates_and_fmnist_gpu_changes_only_the_compute():
    from clusterssl.config import load_params

    presets = sorted((PARAMS_YAML.parent / "config/presets").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"paper-cifar10", "paper-cifar100", "paper-stl10", "paper-imagenet100", "fmnist-gpu"}
    loaded = {p.stem: load_params(PARAMS_YAML, p) for p in presets}
    gpu, cpu = loaded["fmnist-gpu"], loaded["fmnist-all"]
    assert gpu["backbone"] == {"name": "resnet18", "layers": [2, 2, 2, 2], "channels": [64, 128, 256, 512], "stem": "small"}
    for p in (gpu, cpu):
        p.pop("backbone"), p.pop("paths"), p.pop("seeds")
        for key in ("epochs", "batch_size", "warmup_epochs", "checkpoint_every", "device"):
            p["pretrain"].pop(key)
        for recipe in p["method_params"].values():  # a method's own batch (CoKe's 64 on CPU) is compute too
            if recipe.get("pretrain", {}).pop("batch_size", None) is not None and not recipe["pretrain"]:
                del recipe["pretrain"]
    assert gpu == cpu  # the same methods, recipes and evaluation
