"""Dataset fetch/prepare on fake Fashion-MNIST archives (mirror dir, local HTTP server) and on
scikit-learn's digits; checksum/corruption handling, atomic outputs, offline error messages."""
from __future__ import annotations

import functools
import gzip
import json
import threading
import zlib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from clusterssl import data
from clusterssl.data import digits, fashion_mnist
from clusterssl.io import UserError, file_sha256
from conftest import FMNIST_NAMES, hidden_entries, idx_bytes, make_fake_fmnist, write_gz

LAST = "t10k-labels-idx1-ubyte.gz"  # fetched last: the first three are already copied when it fails


def raw_dir_of(tmp_path, name="fashion_mnist"):
    return tmp_path / "data" / "raw" / name


# --- local HTTP server ------------------------------------------------------------------------
class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def http_server():
    """http_server(directory) -> base URL (with trailing slash) serving `directory` on 127.0.0.1."""
    running = []

    def start(directory):
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory)))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- fetch ----------------------------------------------------------------------------------
def test_fetch_from_mirror_dir(tmp_path, fake_fmnist):
    raw = raw_dir_of(tmp_path)
    assert data.fetch("fashion_mnist", raw) == raw
    assert sorted(p.name for p in raw.iterdir()) == sorted(FMNIST_NAMES)
    for name in FMNIST_NAMES:
        assert (raw / name).read_bytes() == (fake_fmnist["dir"] / name).read_bytes()
    assert hidden_entries(raw.parent) == []


def test_fetch_from_mirror_subdir(tmp_path, offline_fmnist_env, monkeypatch):
    mirror = tmp_path / "mirror"
    fake = make_fake_fmnist(mirror / "fashion_mnist")
    monkeypatch.setattr(fashion_mnist, "FILES", fake["sha"])
    monkeypatch.setenv("CLUSTERSSL_DATA_MIRROR", str(mirror))
    raw = data.fetch("fashion_mnist", raw_dir_of(tmp_path))
    assert sorted(p.name for p in raw.iterdir()) == sorted(FMNIST_NAMES)


def test_fetch_replaces_existing_raw_dir(tmp_path, fake_fmnist):
    raw = raw_dir_of(tmp_path)
    raw.mkdir(parents=True)
    (raw / "stale.txt").write_text("old")
    data.fetch("fashion_mnist", raw)
    assert sorted(p.name for p in raw.iterdir()) == sorted(FMNIST_NAMES)


def _corrupt(path, how):
    gz = bytearray(path.read_bytes())
    if how == "crc":  # flip a byte of the CRC-32 trailer: gzip reports a CRC mismatch (OSError)
        gz[-8] ^= 0xFF
        path.write_bytes(bytes(gz))
    elif how == "deflate":  # reserved block type in the first deflate block header: zlib.error
        gz[10] |= 0b110
        path.write_bytes(bytes(gz))
    elif how == "truncated":
        path.write_bytes(bytes(gz[: len(gz) // 2]))
    elif how == "not_gzip":
        path.write_bytes(b"<html>404 Not Found</html>")
    elif how == "different_content":  # a valid archive, but not the expected data
        arr = np.frombuffer(gzip.decompress(bytes(gz))[8:], np.uint8).copy()
        arr[0] ^= 1
        write_gz(path, idx_bytes(arr))
    else:
        raise ValueError(how)


@pytest.mark.parametrize(
    "how",
    [
        "crc",
        "truncated",
        "not_gzip",
        "different_content",
        "deflate",
    ],
)
@pytest.mark.parametrize("name", ["train-images-idx3-ubyte.gz", LAST])
def test_fetch_corrupt_archive(tmp_path, fake_fmnist, how, name):
    _corrupt(fake_fmnist["dir"] / name, how)
    raw = raw_dir_of(tmp_path)
    with pytest.raises(UserError) as info:
        data.fetch("fashion_mnist", raw)
    msg = str(info.value)
    assert "checksum" in msg or "corrupt" in msg
    assert msg.startswith(str(fake_fmnist["dir"] / name)), "the mirror's file is named, not a temporary copy"
    assert not raw.exists()
    assert hidden_entries(raw.parent) == []


def test_fetch_failure_keeps_previous_raw_dir(tmp_path, fake_fmnist):
    raw = raw_dir_of(tmp_path)
    raw.mkdir(parents=True)
    (raw / "keep.txt").write_text("previous")
    _corrupt(fake_fmnist["dir"] / LAST, "crc")
    with pytest.raises(UserError):
        data.fetch("fashion_mnist", raw)
    assert [p.name for p in raw.iterdir()] == ["keep.txt"]
    assert hidden_entries(raw.parent) == []


def _assert_offline_message(msg):
    assert "CLUSTERSSL_DATA_MIRROR" in msg
    assert "dataset-fashion-mnist" in msg


def test_fetch_offline_nothing_anywhere(tmp_path, offline_fmnist_env):
    raw = raw_dir_of(tmp_path)
    with pytest.raises(UserError) as info:
        data.fetch("fashion_mnist", raw)
    _assert_offline_message(str(info.value))
    assert not raw.exists()
    assert hidden_entries(raw.parent) == []


def test_fetch_offline_empty_mirror_and_one_file_missing(tmp_path, offline_fmnist_env, monkeypatch):
    fake = make_fake_fmnist(tmp_path / "mirror")
    monkeypatch.setattr(fashion_mnist, "FILES", fake["sha"])
    monkeypatch.setenv("CLUSTERSSL_DATA_MIRROR", str(fake["dir"]))
    (fake["dir"] / LAST).unlink()
    raw = raw_dir_of(tmp_path)
    with pytest.raises(UserError) as info:
        data.fetch("fashion_mnist", raw)
    _assert_offline_message(str(info.value))
    assert LAST in str(info.value)
    assert not raw.exists()
    assert hidden_entries(raw.parent) == []


# --- fetch over HTTP ------------------------------------------------------------------------
def test_fetch_over_http_official_url(tmp_path, offline_fmnist_env, monkeypatch, http_server):
    fake = make_fake_fmnist(tmp_path / "served")
    monkeypatch.setattr(fashion_mnist, "FILES", fake["sha"])
    monkeypatch.setenv("CLUSTERSSL_FASHION_MNIST_URL", http_server(fake["dir"]))
    raw = data.fetch("fashion_mnist", raw_dir_of(tmp_path))
    for name in FMNIST_NAMES:
        assert (raw / name).read_bytes() == (fake["dir"] / name).read_bytes()


def test_fetch_over_http_mirror(tmp_path, offline_fmnist_env, monkeypatch, http_server):
    # the mirror URL is tried with fashion_mnist/ first (404 here), then at its root
    fake = make_fake_fmnist(tmp_path / "served")
    monkeypatch.setattr(fashion_mnist, "FILES", fake["sha"])
    monkeypatch.setenv("CLUSTERSSL_DATA_MIRROR", http_server(fake["dir"]).rstrip("/"))
    raw = data.fetch("fashion_mnist", raw_dir_of(tmp_path))
    assert sorted(p.name for p in raw.iterdir()) == sorted(FMNIST_NAMES)


def test_fetch_over_http_missing_file(tmp_path, offline_fmnist_env, monkeypatch, http_server):
    fake = make_fake_fmnist(tmp_path / "served")
    monkeypatch.setattr(fashion_mnist, "FILES", fake["sha"])
    (fake["dir"] / LAST).unlink()
    monkeypatch.setenv("CLUSTERSSL_FASHION_MNIST_URL", http_server(fake["dir"]))
    raw = raw_dir_of(tmp_path)
    with pytest.raises(UserError) as info:
        data.fetch("fashion_mnist", raw)
    _assert_offline_message(str(info.value))
    assert not raw.exists()
    assert hidden_entries(raw.parent) == []


# --- prepare --------------------------------------------------------------------------------
def test_prepare_fashion_mnist(tmp_path, fake_fmnist):
    raw = data.fetch("fashion_mnist", raw_dir_of(tmp_path))
    out = tmp_path / "data" / "prepared" / "fashion_mnist"
    assert data.prepare("fashion_mnist", raw, out) == out
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test.npz", "train.npz"]
    arrays = fake_fmnist["arrays"]
    for split, prefix in (("train", "train"), ("test", "t10k")):
        with np.load(out / f"{split}.npz") as z:
            x, y = z["images"], z["labels"]
        assert x.dtype == np.uint8 and x.shape == (len(arrays[f"{prefix}-labels-idx1-ubyte.gz"]), 28, 28, 1)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x[..., 0], arrays[f"{prefix}-images-idx3-ubyte.gz"])
        np.testing.assert_array_equal(y, arrays[f"{prefix}-labels-idx1-ubyte.gz"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["name"] == "fashion_mnist"
    assert len(meta["classes"]) == 10 and meta["classes"][0] == "T-shirt/top"
    assert meta["image_shape"] == [28, 28, 1]
    assert (meta["num_train"], meta["num_test"]) == (30, 20)
    assert data.load_meta(out) == meta
    assert hidden_entries(out) == [] and hidden_entries(out.parent) == []
    split = data.load_prepared(out, "train", limit=7)
    assert len(split) == 7 and split.images.shape == (7, 28, 28, 1)


def test_prepare_without_raw_data(tmp_path):
    out = tmp_path / "prepared"
    with pytest.raises(UserError, match="not found"):
        data.prepare("fashion_mnist", tmp_path / "raw" / "fashion_mnist", out)
    assert not out.exists()


def test_prepare_failure_leaves_no_output(tmp_path, fake_fmnist):
    raw = data.fetch("fashion_mnist", raw_dir_of(tmp_path))
    # the raw archive changed after fetching: a header that promises more images than it holds
    labels = fake_fmnist["arrays"][LAST]
    write_gz(raw / LAST, idx_bytes(labels)[:-3])
    out = tmp_path / "data" / "prepared" / "fashion_mnist"
    with pytest.raises(UserError):
        data.prepare("fashion_mnist", raw, out)
    assert not out.exists()
    assert hidden_entries(out.parent) == []


def test_unknown_dataset(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'cifar7'; choose one of: cifar10, .*digits"):
        data.fetch("cifar7", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_load_prepared_missing(tmp_path):
    with pytest.raises(UserError, match="not found"):
        data.load_prepared(tmp_path, "train")
    with pytest.raises(UserError, match="not found"):
        data.load_meta(tmp_path)


def test_prepared_files_carry_checksums_and_damaged_ones_are_refused(tmp_path):
    raw = data.fetch("digits", tmp_path / "raw" / "digits")
    out = data.prepare("digits", raw, tmp_path / "prepared" / "digits")
    meta = data.load_meta(out)
    assert meta["sha256"] == {f: file_sha256(out / f) for f in ("train.npz", "test.npz")}
    good = (out / "train.npz").read_bytes()

    (out / "train.npz").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(UserError, match=r"train.npz: changed or damaged since it was prepared .* run `clusterssl data prepare` again"):
        data.load_prepared(out, "train")
    meta["sha256"]["train.npz"] = file_sha256(out / "train.npz")  # damaged before its checksum was taken: one clear error
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"train.npz: not a prepared split \(BadZipFile"):
        data.load_prepared(out, "train")
    del meta["sha256"]  # a folder prepared before checksums: nothing vouches for its files
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"meta.json: records no SHA-256 of train.npz \(written by an older clusterssl\); .* run `clusterssl data prepare` again"):
        data.load_prepared(out, "train")
    (out / "meta.json").unlink()
    with pytest.raises(UserError, match=r"meta.json: not found, so the prepared splits beside it cannot be checked; .* `clusterssl data prepare`"):
        data.load_prepared(out, "train")
    (out / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match=r"meta.json: not valid JSON"):
        data.load_meta(out)


# --- read_idx -------------------------------------------------------------------------------
def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(fashion_mnist.read_idx(write_gz(tmp_path / "a.gz", idx_bytes(arr))), arr)


def test_read_idx_truncated_payload(tmp_path):
    arr = np.zeros((10, 28, 28), np.uint8)
    path = write_gz(tmp_path / "t.gz", idx_bytes(arr)[:-100])
    with pytest.raises(UserError, match="IDX header"):
        fashion_mnist.read_idx(path)


def test_read_idx_wrong_magic(tmp_path):
    path = write_gz(tmp_path / "m.gz", b"\x00\x00\x0d\x01" + b"\x00\x00\x00\x04" + b"\x00" * 16)  # float IDX
    with pytest.raises(UserError, match="IDX"):
        fashion_mnist.read_idx(path)


def test_read_idx_truncated_archive(tmp_path):
    arr = (np.arange(10 * 28 * 28) % 7).astype(np.uint8).reshape(10, 28, 28)
    path = write_gz(tmp_path / "t.gz", idx_bytes(arr))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(UserError):
        fashion_mnist.read_idx(path)


def test_read_idx_truncated_header(tmp_path):
    path = write_gz(tmp_path / "h.gz", b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(UserError):
        fashion_mnist.read_idx(path)


# --- digits ---------------------------------------------------------------------------------
def test_digits_fetch_and_prepare(tmp_path):
    raw = data.fetch("digits", tmp_path / "raw" / "digits")
    assert (raw / "digits.npz").exists()
    out = data.prepare("digits", raw, tmp_path / "prepared" / "digits")
    tr, te = data.load_prepared(out, "train"), data.load_prepared(out, "test")
    assert len(tr) + len(te) == 1797
    for split in (tr, te):
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (8, 8, 1)
        assert split.labels.dtype == np.int64
    assert tr.images.max() == 255
    assert set(te.labels.tolist()) == set(range(10)) == set(tr.labels.tolist())
    # the stratified split gives every class its share of the test set
    counts = np.bincount(te.labels, minlength=10)
    totals = counts + np.bincount(tr.labels, minlength=10)
    np.testing.assert_array_equal(counts, np.round(totals * digits.TEST_FRACTION).astype(int))
    meta = data.load_meta(out)
    assert meta["classes"] == [str(i) for i in range(10)]
    assert (meta["num_train"], meta["num_test"]) == (len(tr), len(te))
    assert meta["image_shape"] == [8, 8, 1]
    # prepare is deterministic
    out2 = data.prepare("digits", raw, tmp_path / "prepared2")
    np.testing.assert_array_equal(data.load_prepared(out2, "test").labels, te.labels)
