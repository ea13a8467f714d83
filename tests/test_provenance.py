"""No confident number from bad data: prepared splits, features and metrics are checked where a
stage reads them, and derived files say what they came from. Each test damages or swaps a real
file (digits, prepared and embedded here) and expects `clusterssl` to stop with exit status 2,
one line naming the file, what is wrong and the fix, and to write nothing."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from clusterssl import paths, train
from clusterssl.cli import main
from clusterssl.config import fingerprint, validate
from clusterssl.io import file_sha256
from clusterssl.runtime import pretrain_config
from conftest import all_files, preset_params

RAW = paths.RAW_PIXELS


def run(capsys, params_file, *argv):
    rc = main(["--params", str(params_file), *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(rc, err, *words):
    """Exit status 2 and one line that names each of `words`, no traceback."""
    assert rc == 2, err
    assert err.startswith("clusterssl: error:") and err.strip().count("\n") == 0, err
    for word in words:
        assert str(word) in err, err


def digits_params(root) -> dict:
    """The tiny preset on digits under `root`, small enough for seconds per stage."""
    params = preset_params("tiny")
    params["paths"] = {"data": str(root / "data"), "results": str(root / "results")}
    params["data"]["max_train"] = 256
    params["pretrain"].update(epochs=1, batch_size=64, checkpoint_every=1)
    params["eval"].update(max_train=300, transfer={"datasets": []})
    params["eval"]["linear"]["epochs"] = 5
    params["eval"]["knn"]["k"] = [5]
    params["eval"]["cluster"]["n_init"] = 1
    return validate(params)


def write_params(params: dict, root) -> object:
    f = root / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    return f


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """digits prepared; CARL and SimCLR pretrained for one epoch; every encoder's features."""
    root = tmp_path_factory.mktemp("trained")
    params = digits_params(root)
    f = write_params(params, root)
    for argv in (["data", "fetch", "digits"], ["data", "prepare", "digits"], ["embed", "--method", RAW, "--threads", "1"]):
        assert main(["--params", str(f), *argv]) == 0
    for method in ("carl", "simclr"):
        train.pretrain(params, method, 0, threads=1, progress=False)
        assert main(["--params", str(f), "embed", "--method", method, "--threads", "1"]) == 0
    return root


@pytest.fixture
def work(trained, tmp_path, monkeypatch):
    """A copy of `trained` of the test's own: (params, params file)."""
    monkeypatch.chdir(tmp_path)
    for folder in ("data", "results"):
        shutil.copytree(trained / folder, tmp_path / folder)
    params = digits_params(tmp_path)
    return params, write_params(params, tmp_path)


def rewrite_npz(path, **changes):
    """`path` with some arrays replaced (None: removed), written as the stage would (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def metrics_written(params) -> list:
    return all_files(paths.results_dir(params) / "metrics")


# --- prepared splits ------------------------------------------------------------------------------
def _label(index: int, value: int):
    def change(arrays):
        labels = arrays["labels"].copy()
        labels[index] = value
        return {"labels": labels}

    return change


def _nan_float_images(arrays):
    images = arrays["images"].astype(np.float64)
    images[:5] = np.nan
    return {"images": images}


TRAIN_READERS = (["embed", "--method", RAW], ["pretrain", "--method", "carl", "--no-progress"], ["data", "split", "--fraction", "0.1"])


@pytest.mark.parametrize("split, change, words, readers", [
    ("train", _label(7, 10), ["outside 0..9", "10 at index 7"], TRAIN_READERS),  # ten classes: 0..9
    ("test", _label(3, 42), ["outside 0..9", "42 at index 3"], TRAIN_READERS[:1]),  # pretraining reads no test image
    ("train", _nan_float_images, ["float64, not uint8"], TRAIN_READERS),
])
def test_a_bad_prepared_split_is_refused_where_it_is_loaded(work, capsys, split, change, words, readers):
    params, f = work
    prepared = paths.prepared_dir(params, "digits")
    with np.load(prepared / f"{split}.npz") as z:
        rewrite_npz(prepared / f"{split}.npz", **change(z))
    # the checksum in meta.json is brought up to date, so that only the new checks can catch it
    meta = json.loads((prepared / "meta.json").read_text())
    meta["sha256"][f"{split}.npz"] = file_sha256(prepared / f"{split}.npz")
    (prepared / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(paths.results_dir(params))

    for argv in readers:
        rc, _, err = run(capsys, f, *argv, *(["--threads", "1"] if argv[0] != "data" else []))
        assert_refused(rc, err, prepared / f"{split}.npz", *words, "clusterssl data prepare")
    assert all_files(paths.results_dir(params)) == []
    assert not (paths.data_dir(params) / "splits").exists()


def test_a_meta_json_without_checksums_is_refused(work, capsys):
    params, f = work
    meta_file = paths.prepared_dir(params, "digits") / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["sha256"]  # so an altered train.npz would pass unseen
    meta_file.write_text(json.dumps(meta))
    rc, _, err = run(capsys, f, "embed", "--method", RAW, "--threads", "1")
    assert_refused(rc, err, meta_file, "no SHA-256 of train.npz", "older clusterssl", "clusterssl data prepare")


# --- features ------------------------------------------------------------------------------------
def test_nan_rows_in_train_features_are_refused_by_the_linear_probe_and_knn(work, capsys):
    params, f = work
    shutil.rmtree(paths.results_dir(params) / "metrics", ignore_errors=True)
    features = paths.features_file(params, RAW, 0)
    with np.load(features) as z:
        x = z["train_features"].copy()
    x[[3, 50, 100, 200, 299]] = np.nan
    rewrite_npz(features, train_features=x)
    for protocol in ("linear", "knn"):
        rc, _, err = run(capsys, f, "eval", protocol, "--method", RAW, "--threads", "1")
        assert_refused(rc, err, features, "NaN", "5 of 300 rows", f"clusterssl embed --method {RAW} --seed 0")
    assert metrics_written(params) == []


def _truncated(path):
    path.write_bytes(path.read_bytes()[:-500])


def _object_array(path):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_labels"] = arrays["train_labels"].astype(object)
    np.savez(path, **arrays)  # allow_pickle is numpy's default when saving


def _no_test_labels(path):
    rewrite_npz(path, test_labels=None)


def _no_provenance(path):
    rewrite_npz(path, provenance=None)  # as clusterssl wrote features before they had one


@pytest.mark.parametrize("damage, words", [
    (_truncated, ["not a readable features file", "BadZipFile"]),
    (_object_array, ["not a readable features file", "ValueError"]),
    (_no_test_labels, ["has no test_labels"]),
    (_no_provenance, ["records no provenance", "older clusterssl"]),
])
def test_unreadable_or_incomplete_features_are_one_line(work, capsys, damage, words):
    params, f = work
    shutil.rmtree(paths.results_dir(params) / "metrics", ignore_errors=True)
    features = paths.features_file(params, "carl", 0)
    damage(features)
    rc, _, err = run(capsys, f, "eval", "cluster", "--method", "carl", "--threads", "1")
    assert_refused(rc, err, features, *words, "clusterssl embed --method carl --seed 0")
    assert metrics_written(params) == []


def test_simclr_features_copied_over_carls_are_refused(work, capsys):
    params, f = work
    shutil.rmtree(paths.results_dir(params) / "metrics", ignore_errors=True)
    carl = paths.features_file(params, "carl", 0)
    shutil.copyfile(paths.features_file(params, "simclr", 0), carl)
    rc, _, err = run(capsys, f, "eval", "linear", "--method", "carl", "--threads", "1")
    assert_refused(rc, err, carl, "holds the features of simclr seed 0", "not carl seed 0", "clusterssl embed --method carl --seed 0")
    assert metrics_written(params) == []


def test_features_of_a_checkpoint_trained_again_since_are_refused(work, capsys):
    params, f = work
    shutil.rmtree(paths.results_dir(params) / "metrics", ignore_errors=True)
    checkpoint = paths.run_files(params, "carl", 0)[0]
    state = torch.load(checkpoint, weights_only=True)
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] += 0.01  # what another run leaves: the same keys, other weights
    torch.save(state, checkpoint)
    rc, _, err = run(capsys, f, "eval", "knn", "--method", "carl", "--threads", "1")
    assert_refused(rc, err, paths.features_file(params, "carl", 0), "made from a checkpoint with SHA-256", checkpoint,
                   "clusterssl embed --method carl --seed 0")
    assert metrics_written(params) == []


def test_an_encoder_giving_nan_features_is_refused_when_embedding(work, capsys):
    params, f = work
    checkpoint = paths.run_files(params, "carl", 0)[0]
    state = torch.load(checkpoint, weights_only=True)
    for k, v in state["model"].items():
        if v.is_floating_point():
            v.fill_(float("nan"))  # a diverged run
    torch.save(state, checkpoint)
    features = paths.features_file(params, "carl", 0)
    features.unlink()
    rc, _, err = run(capsys, f, "embed", "--method", "carl", "--threads", "1")
    assert_refused(rc, err, features, "NaN", checkpoint, "clusterssl pretrain --method carl --seed 0")
    assert not features.exists()


def test_features_and_metrics_record_what_they_came_from(work, capsys):
    params, f = work
    features, checkpoint = paths.features_file(params, "carl", 0), paths.run_files(params, "carl", 0)[0]
    with np.load(features, allow_pickle=False) as z:
        source = json.loads(str(z["provenance"][()]))
    assert source == {"method": "carl", "seed": 0, "dataset": "digits", "pretrained_on": "digits", "num_classes": 10,
                      "checkpoint_sha256": file_sha256(checkpoint),
                      # the run's fingerprint, as train.py computes it
                      "params_fingerprint": fingerprint({**pretrain_config(params, "carl"), "seed": 0})}
    with np.load(paths.features_file(params, RAW, 0), allow_pickle=False) as z:
        assert json.loads(str(z["provenance"][()]))["checkpoint_sha256"] == RAW
    rc, _, err = run(capsys, f, "eval", "knn", "--method", "carl", "--threads", "1")
    assert rc == 0, err
    record = json.loads(paths.metrics_file(params, "carl", 0, "knn").read_text())
    assert {k: record[k] for k in ("method", "seed", "pretrained_on", "evaluation")} == {
        "method": "carl", "seed": 0, "pretrained_on": "digits", "evaluation": "knn"}
    assert record["features_sha256"] == file_sha256(features) and record["checkpoint_sha256"] == file_sha256(checkpoint)


def test_semisup_metrics_record_the_checkpoint_they_fine_tuned(work, capsys):
    params, f = work
    params["eval"]["semisup"].update(steps=2, lr=[0.01])
    f = write_params(params, f.parent)
    rc, _, err = run(capsys, f, "data", "split", "--fraction", "0.1", "--seed", "0")
    assert rc == 0, err
    rc, _, err = run(capsys, f, "eval", "semisup", "--fraction", "0.1", "--method", "carl", "--threads", "1")
    assert rc == 0, err
    record = json.loads(paths.metrics_file(params, "carl", 0, "semisup_0.1").read_text())
    assert record["evaluation"] == "semisup_0.1" and record["pretrained_on"] == "digits"
    assert record["checkpoint_sha256"] == file_sha256(paths.run_files(params, "carl", 0)[0])


def test_simclr_metrics_copied_into_carls_folder_are_refused_by_the_report(work, capsys):
    from clusterssl.io import UserError
    from clusterssl.report import collect

    params, f = work
    rc, _, err = run(capsys, f, "eval", "linear", "--method", "simclr", "--threads", "1")
    assert rc == 0, err
    carl = paths.metrics_file(params, "carl", 0, "linear")
    carl.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.metrics_file(params, "simclr", 0, "linear"), carl)
    with pytest.raises(UserError, match=r"carl/seed0/linear.json: holds linear metrics of simclr seed 0 .* "
                                        r"re-run `clusterssl eval linear --method carl --seed 0`"):
        collect(params, ["carl"], {"linear"})
