"""The `clusterssl` CLI, run in-process: params validation errors, wrong method names, stages
run out of order, offline Fashion-MNIST fetch, and a tiny digits raw-pixel round trip. Every
error must exit with status 2, name the offending key/file on stderr, and write nothing."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clusterssl import paths
from clusterssl.cli import main
from conftest import FMNIST_NAMES, all_files, hidden_entries


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def run(capsys, params_file, *argv):
    rc = main(["--params", str(params_file), *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc, err):
    assert rc == 2
    assert err.startswith("clusterssl: error:")
    assert "Traceback" not in err


# --- params validation --------------------------------------------------------------------------
def _set(path, value):
    def modify(p):
        d = p
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return modify


def _delete(path):
    def modify(p):
        d = p
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]

    return modify


def _as_digits(p):
    """Pretrain on digits; the default transfer target (digits) becomes Fashion-MNIST."""
    p["dataset"] = "digits"
    p["eval"]["transfer"]["datasets"] = ["fashion_mnist"]


INVALID = {
    "unknown_method": (_set(["methods"], ["carl", "nosuch"]), "methods"),
    "unknown_dataset": (_set(["dataset"], "cifar7"), "dataset"),
    "wrong_type": (_set(["pretrain", "epochs"], "ten"), "pretrain.epochs"),
    "out_of_range": (_set(["augment", "flip"], 1.5), "augment.flip"),
    "bad_enum_nested": (_set(["method_params", "carl", "target"], "nope"), "method_params.carl.target"),
    "missing_key": (_delete(["pretrain", "lr"]), "pretrain.lr"),
    "missing_section": (_delete(["eval"]), "eval"),
    "extra_key": (_set(["pretrain", "epochz"], 3), "pretrain.epochz"),
    "extra_top_level_key": (_set(["learning_rate"], 0.1), "learning_rate"),
    "transfer_to_the_pretraining_dataset": (_set(["eval", "transfer", "datasets"], ["fashion_mnist"]), "eval.transfer.datasets"),
    "unknown_transfer_dataset": (_set(["eval", "transfer", "datasets"], ["cifar7"]), "eval.transfer.datasets.0"),
    "semisup_fraction_of_one": (_set(["eval", "semisup", "fractions"], [0.01, 1.0]), "eval.semisup.fractions.1"),
    "semisup_no_fractions": (_set(["eval", "semisup", "fractions"], []), "eval.semisup.fractions"),
    "semisup_crop_scale_reversed": (_set(["eval", "semisup", "crop_scale"], [0.9, 0.5]), "eval.semisup.crop_scale"),
    "semisup_missing_section": (_delete(["eval", "semisup"]), "eval.semisup"),
    "negative_lr": (_set(["pretrain", "lr"], -0.1), "pretrain.lr"),
    "batch_of_zero": (_set(["pretrain", "batch_size"], 0), "pretrain.batch_size"),
    "crop_scale_reversed": (_set(["augment", "crop_scale"], [1.0, 0.3]), "augment.crop_scale"),
    "no_methods": (_set(["methods"], []), "methods"),
    "seed_below_zero": (_set(["seeds"], [-1]), "seeds"),
    # a method's recipe: the shared keys it may replace, with the same types and ranges
    "recipe_unknown_augment_key": (_set(["method_params", "cc", "augment"], {"crop_scal": [0.2, 1.0]}), "method_params.cc.augment.crop_scal"),
    "recipe_sets_epochs": (_set(["method_params", "simclr", "pretrain"], {"epochs": 20}), "method_params.simclr.pretrain.epochs"),
    "recipe_unknown_optimizer": (_set(["method_params", "cc", "pretrain"], {"optimizer": "adagrad"}), "method_params.cc.pretrain.optimizer"),
    "recipe_negative_lr": (_set(["method_params", "cadc", "pretrain"], {"lr": -1e-3}), "method_params.cadc.pretrain.lr"),
    "recipe_crop_scale_reversed": (_set(["method_params", "swav", "augment"], {"crop_scale": [0.9, 0.2]}), "method_params.swav.augment.crop_scale"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
@pytest.mark.parametrize("verb", [["pretrain", "--method", "carl"], ["data", "fetch", "digits"]])
def test_invalid_params(tmp_path, capsys, write_params, case, verb):
    modify, key = INVALID[case]
    rc, out, err = run(capsys, write_params(modify), *verb)
    assert_user_error(rc, err)
    assert f"'{key}" in err  # the message quotes the dotted key
    assert "params.yaml" in err
    assert out == ""
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "data").exists()


def test_invalid_method_value_is_named(capsys, write_params):
    rc, _, err = run(capsys, write_params(_set(["methods"], ["carl", "nosuch"])), "pretrain", "--method", "carl")
    assert_user_error(rc, err)
    assert "nosuch" in err


def test_params_file_missing(tmp_path, capsys):
    rc, _, err = run(capsys, tmp_path / "nope.yaml", "data", "fetch", "digits")
    assert_user_error(rc, err)
    assert "nope.yaml" in err and "not found" in err


@pytest.mark.parametrize("text", ["dataset: [unclosed\n", "- just\n- a list\n"])
def test_params_not_a_mapping_or_not_yaml(tmp_path, capsys, text):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    rc, _, err = run(capsys, f, "data", "fetch", "digits")
    assert_user_error(rc, err)
    assert "bad.yaml" in err


def test_default_params_file_is_looked_up_in_cwd(tmp_path, capsys):
    rc = main(["data", "fetch", "digits"])
    _, err = capsys.readouterr()
    assert_user_error(rc, err)
    assert "params.yaml" in err and "not found" in err


# --- method names ---------------------------------------------------------------------------
def test_pretrain_unknown_method(tmp_path, capsys, write_params):
    rc, out, err = run(capsys, write_params(), "pretrain", "--method", "nosuch")
    assert_user_error(rc, err)
    assert "nosuch" in err
    assert "carl" in err and "simclr" in err
    assert not (tmp_path / "results").exists()


def test_embed_unknown_method(tmp_path, capsys, write_params):
    rc, _, err = run(capsys, write_params(_as_digits), "embed", "--method", "nosuch")
    assert_user_error(rc, err)
    assert "nosuch" in err and "carl" in err
    assert not (tmp_path / "results").exists()


# --- stages out of order ------------------------------------------------------------------------
@pytest.fixture
def digits_params(tmp_path, capsys, write_params):
    """A params file for `digits`, with the dataset fetched and prepared under tmp_path/data."""

    def modify(p):
        _as_digits(p)
        p["eval"]["max_train"] = 300
        p["eval"]["cluster"]["n_init"] = 1
        p["eval"]["knn"]["k"] = [5]

    f = write_params(modify)
    for action in ("fetch", "prepare"):
        rc, out, err = run(capsys, f, "data", action)
        assert rc == 0, err
    assert (tmp_path / "data" / "prepared" / "digits" / "meta.json").exists()
    return f


def test_prepare_before_fetch(tmp_path, capsys, write_params):
    rc, _, err = run(capsys, write_params(), "data", "prepare", "digits")
    assert_user_error(rc, err)
    assert "not found" in err and "data fetch digits" in err
    assert not (tmp_path / "data" / "prepared").exists()


def test_embed_before_prepare(tmp_path, capsys, write_params):
    rc, _, err = run(capsys, write_params(_as_digits), "embed", "--method", "carl")
    assert_user_error(rc, err)
    assert "not found" in err and "train.npz" in err
    assert all_files(tmp_path / "results") == []


def test_embed_before_pretrain(tmp_path, capsys, digits_params):
    rc, _, err = run(capsys, digits_params, "embed", "--method", "carl")
    assert_user_error(rc, err)
    checkpoint = tmp_path / "results" / "runs" / "digits" / "carl" / "seed0" / "checkpoint.pt"
    assert str(checkpoint) in err and "not found" in err
    assert all_files(tmp_path / "results") == []


def test_eval_before_embed(tmp_path, capsys, digits_params):
    for protocol in ("linear", "knn", "cluster"):
        rc, _, err = run(capsys, digits_params, "eval", protocol, "--method", "carl", "--seed", "3")
        assert_user_error(rc, err)
        features = tmp_path / "results" / "features" / "digits" / "carl" / "seed3" / "digits.npz"
        assert str(features) in err and "not found" in err
    assert all_files(tmp_path / "results") == []


def test_pretrain_before_prepare(tmp_path, capsys, write_params):
    rc, _, err = run(capsys, write_params(_as_digits), "pretrain", "--method", "carl")
    assert_user_error(rc, err)
    assert "not found" in err and "meta.json" in err
    assert all_files(tmp_path / "results") == []


def test_cadc_centres_placed_after_the_last_epoch(tmp_path, capsys, digits_params):
    import yaml

    p = yaml.safe_load(digits_params.read_text())
    p["method_params"]["cadc"]["kmeans_epoch"] = p["pretrain"]["epochs"]
    digits_params.write_text(yaml.safe_dump(p))
    rc, _, err = run(capsys, digits_params, "pretrain", "--method", "cadc")
    assert_user_error(rc, err)
    assert "method_params.cadc.kmeans_epoch" in err and "pretrain.epochs" in err
    assert all_files(tmp_path / "results") == []


def test_pretrain_before_prepare_leaves_no_directories(tmp_path, capsys, write_params):
    rc, _, err = run(capsys, write_params(_as_digits), "pretrain", "--method", "carl")
    assert rc == 2
    assert not (tmp_path / "results").exists()


def test_report_before_anything(tmp_path, capsys, write_params):
    rc, _, err = run(capsys, write_params(_as_digits), "report")
    assert_user_error(rc, err)
    assert "not found" in err and "linear.json" in err
    assert all_files(tmp_path / "results") == []


# --- Fashion-MNIST fetch ------------------------------------------------------------------------
def test_fetch_fashion_mnist_offline(tmp_path, capsys, write_params, offline_fmnist_env):
    offline_fmnist_env.setenv("CLUSTERSSL_DATA_MIRROR", str(tmp_path / "empty-mirror"))
    rc, out, err = run(capsys, write_params(), "data", "fetch")  # dataset from params: fashion_mnist
    assert_user_error(rc, err)
    assert "CLUSTERSSL_DATA_MIRROR" in err and "dataset-fashion-mnist" in err
    raw_parent = tmp_path / "data" / "raw"
    assert not (raw_parent / "fashion_mnist").exists()
    assert hidden_entries(raw_parent) == []


def test_fetch_and_prepare_fashion_mnist_from_mirror(tmp_path, capsys, write_params, fake_fmnist):
    f = write_params()
    rc, out, err = run(capsys, f, "data", "fetch", "fashion_mnist")
    assert rc == 0, err
    raw = tmp_path / "data" / "raw" / "fashion_mnist"
    assert out.strip() == str(raw)
    assert sorted(p.name for p in raw.iterdir()) == sorted(FMNIST_NAMES)
    rc, out, err = run(capsys, f, "data", "prepare")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "data" / "prepared" / "fashion_mnist").iterdir()) == ["meta.json", "test.npz", "train.npz"]


# --- success path on digits ----------------------------------------------------------------
def test_relative_paths_resolve_against_cwd(tmp_path, capsys, write_params):
    def modify(p):
        p["paths"] = {"data": "d", "results": "r"}

    rc, out, err = run(capsys, write_params(modify), "data", "fetch", "digits")
    assert rc == 0, err
    assert (tmp_path / "d" / "raw" / "digits" / "digits.npz").exists()


def test_raw_pixel_embed_and_eval(tmp_path, capsys, digits_params):
    import yaml

    params = yaml.safe_load(digits_params.read_text())
    rc, out, err = run(capsys, digits_params, "embed", "--method", paths.RAW_PIXELS, "--threads", "1")
    assert rc == 0, err
    feats = paths.features_file(params, paths.RAW_PIXELS, 0)
    assert out.strip() == str(feats) and feats.exists()
    for protocol in ("knn", "cluster"):
        rc, out, err = run(capsys, digits_params, "eval", protocol, "--method", paths.RAW_PIXELS, "--threads", "1")
        assert rc == 0, err
        m = json.loads(paths.metrics_file(params, paths.RAW_PIXELS, 0, protocol).read_text())
        assert m["protocol"] == protocol and m["dataset"] == "digits" and m["num_train"] == 300
    knn = json.loads(paths.metrics_file(params, paths.RAW_PIXELS, 0, "knn").read_text())["metrics"]
    assert knn["k5_top1"] > 0.8  # raw pixels of digits are easy for k-NN
    results = tmp_path / "results"
    assert not [p for p in results.rglob(".*")]  # no temporary leftovers


# --- entry point ----------------------------------------------------------------------------
def _entry_point() -> Path:
    exe = Path(sys.executable).parent / "clusterssl"
    if not exe.exists():
        pytest.skip("clusterssl entry point not installed next to this interpreter")
    return exe


def test_entry_point_help(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([str(_entry_point()), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    for verb in ("data", "pretrain", "embed", "eval", "report"):
        assert verb in r.stdout


def test_entry_point_exit_status(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([str(_entry_point()), "--params", "missing.yaml", "data", "fetch"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 2
    assert "missing.yaml" in r.stderr and "Traceback" not in r.stderr
    # CLUSTERSSL_DEBUG=1: the same error with its traceback, for a bug report
    r = subprocess.run([str(_entry_point()), "--params", "missing.yaml", "data", "fetch"], capture_output=True, text=True,
                       cwd=tmp_path, env={**env, "CLUSTERSSL_DEBUG": "1"}, timeout=60)
    assert r.returncode != 0 and "Traceback" in r.stderr and "missing.yaml" in r.stderr


# --- semi-supervised and transfer ---------------------------------------------------------------
def test_split_fraction_must_be_in_params(tmp_path, capsys, digits_params):
    rc, _, err = run(capsys, digits_params, "data", "split", "--fraction", "0.3")
    assert_user_error(rc, err)
    assert "eval.semisup.fractions" in err and "0.3" in err
    assert not (tmp_path / "data" / "splits").exists()


def test_semisup_before_split_and_scratch_has_no_features(tmp_path, capsys, digits_params):
    rc, _, err = run(capsys, digits_params, "eval", "semisup", "--fraction", "0.01", "--method", paths.SCRATCH)
    assert_user_error(rc, err)
    assert "semisup_0.01_seed0.npy" in err and "data split" in err
    rc, _, err = run(capsys, digits_params, "eval", "linear", "--method", paths.SCRATCH)
    assert_user_error(rc, err)
    assert "semi-supervised baseline only" in err
    rc, _, err = run(capsys, digits_params, "eval", "semisup", "--fraction", "0.5", "--method", paths.RAW_PIXELS)
    assert_user_error(rc, err)
    assert "eval.semisup.fractions" in err
    assert all_files(tmp_path / "results") == []


def test_transfer_target_must_be_in_params(tmp_path, capsys, digits_params):
    rc, _, err = run(capsys, digits_params, "eval", "transfer", "--target", "digits", "--method", paths.RAW_PIXELS)
    assert_user_error(rc, err)
    assert "eval.transfer.datasets" in err
    rc, _, err = run(capsys, digits_params, "embed", "--method", paths.RAW_PIXELS, "--dataset", "nosuch")
    assert_user_error(rc, err)
    assert "--dataset nosuch is neither 'dataset' nor one of eval.transfer.datasets" in err
    assert all_files(tmp_path / "results") == []


def test_raw_pixel_semisup_on_a_split(tmp_path, capsys, digits_params):
    import yaml

    params = yaml.safe_load(digits_params.read_text())
    rc, out, err = run(capsys, digits_params, "data", "split", "--fraction", "0.1", "--seed", "2")
    assert rc == 0, err
    split = paths.split_file(params, "digits", 0.1, 2)
    assert out.strip() == str(split) and split.exists()
    rc, out, err = run(capsys, digits_params, "eval", "semisup", "--fraction", "0.1", "--method", paths.RAW_PIXELS, "--seed", "2")
    assert rc == 0, err
    m = json.loads(paths.metrics_file(params, paths.RAW_PIXELS, 2, "semisup_0.1").read_text())
    assert m["num_train"] == 130 and m["metrics"]["top1"] > 0.7  # 13 labelled digits per class


@pytest.mark.parametrize(
    "argv, wrong",
    [
        (["eval", "linear", "--method", "../../x"], "--method: '../../x' is not a method name"),
        (["embed", "--method", "/tmp/x"], "--method: '/tmp/x' is not a method name"),
        (["eval", "knn", "--method", "nosuch"], "unknown method 'nosuch'"),  # a name, but not a registered method
        (["pretrain", "--method", "nosuch"], "unknown method 'nosuch'"),
        (["pretrain", "--method", "carl", "--seed", "-1"], "--seed: '-1' is not a seed"),
        (["eval", "knn", "--method", "carl", "--seed", "1.5"], "--seed: '1.5' is not a seed"),
        (["data", "fetch", "../outside"], "invalid choice: '../outside'"),
        (["embed", "--method", "carl", "--dataset", "../x"], "--dataset: invalid choice"),
        (["eval", "transfer", "--method", "carl", "--target", "/etc"], "--target: invalid choice"),
    ],
)
def test_names_that_would_leave_the_data_or_results_folders_are_refused(tmp_path, capsys, digits_params, argv, wrong):
    rc, _, err = run(capsys, digits_params, *argv)
    assert_user_error(rc, err)
    assert wrong in err, err
    assert all_files(tmp_path / "results") == [] and not (tmp_path.parent / "x").exists()


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("seeds: [0]\npretrain:\n  lr: [0.1\n  epochs: 3\n")
    rc, out, err = run(capsys, bad, "pretrain", "--method", "carl")
    assert_user_error(rc, err)
    assert str(bad) in err and "not valid YAML" in err and re.search(r"line \d", err), err
    assert not (tmp_path / "results").exists()


def test_tune_names_the_search_file_it_needs(capsys, write_params):
    rc, _, err = run(capsys, write_params(), "tune", "--method", "carl")
    assert_user_error(rc, err)
    assert "--search" in err


@pytest.mark.parametrize("verb", [["pretrain", "--method", "carl"], ["data", "split", "--fraction", "0.1"],
                                  ["eval", "knn", "--method", "carl"]])
def test_a_seed_numpy_and_torch_cannot_take_is_refused_by_every_verb(tmp_path, capsys, write_params, verb):
    # numpy and torch take seeds below 2**32: a larger one failed in pretraining with a traceback
    rc, _, err = run(capsys, write_params(), *verb, "--seed", str(2**32))
    assert_user_error(rc, err)
    assert f"--seed: '{2**32}' is not a seed: an integer from 0 to {2**32 - 1}" in err, err
    assert not (tmp_path / "results").exists()
    from clusterssl.cli import build_parser

    assert build_parser().parse_args([*verb, "--seed", str(2**32 - 1)]).seed == 2**32 - 1  # the largest is a seed


@pytest.mark.parametrize("entry, wrong", [("seeds", "name=value pairs"), ("1seeds=[0]", "valid identifier"),
                                          ("seeds=[0,x]", "seeds")])
def test_dvc_adopt_reads_config_values_as_snakemake_does_and_names_a_bad_one(tmp_path, capsys, write_params, entry, wrong):
    """`dvc-adopt --config` takes what `snakemake --config` took: a malformed entry, or a value
    the schema refuses, is one line naming it, before any file or DVC is touched."""
    params = write_params()
    before = all_files(tmp_path)
    rc, _, err = run(capsys, params, "dvc-adopt", "--config", entry)
    assert_user_error(rc, err)
    assert wrong in err and len(err.strip().splitlines()) == 1, err
    assert all_files(tmp_path) == before
