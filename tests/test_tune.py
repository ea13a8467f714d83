"""The equal-budget recipe search: same number of candidates per method, the proxy's held-out
images never pretrained on, the test split never read, an interrupted search resumed."""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from clusterssl import data, paths, tune
from clusterssl.cli import main
from clusterssl.io import UserError
from conftest import ROOT

PROXY = {"holdout": 300, "pretrain_images": 400, "epochs": 1, "probe_images": 600, "seed": 0}


@pytest.fixture
def digits(tmp_path):
    params = yaml.safe_load((ROOT / "config/presets/tiny.yaml").read_text())
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    params["pretrain"]["batch_size"] = 64
    data.fetch("digits", paths.raw_dir(params, "digits"))
    data.prepare("digits", paths.raw_dir(params, "digits"), paths.prepared_dir(params, "digits"))
    return params


def _search(tmp_path, methods, candidates=2) -> dict:
    search = {"proxy": PROXY, "candidates": candidates, "methods": methods}
    f = tmp_path / "search.yaml"
    f.write_text(yaml.safe_dump(search))
    return tune.load_search(f)


def test_the_proxy_holds_images_out_of_pretraining_and_never_reads_the_test_split(tmp_path, digits):
    source = paths.prepared_dir(digits, "digits")
    (source / "test.npz").unlink()  # a search that touched the test split would fail
    data_dir = tune.proxy_data(digits, PROXY, tmp_path / "tuning")
    proxy = paths.prepared_dir({"paths": {"data": str(data_dir)}}, "digits")
    train, held = data.load_prepared(proxy, "train"), data.load_prepared(proxy, "test")
    full = data.load_prepared(source, "train")
    assert len(held.labels) == PROXY["holdout"] and len(train.labels) + len(held.labels) == len(full.labels)
    rows = lambda split: {x.tobytes() for x in split.images.reshape(len(split.labels), -1)}
    assert not rows(train) & rows(held) and rows(train) | rows(held) == rows(full)


def test_a_search_scores_each_candidate_on_the_held_out_images_and_resumes(tmp_path, digits, monkeypatch):
    search = _search(tmp_path, {"carl": [{}, {"augment.crop_scale": [0.5, 1.0], "temperature": 0.2}]})
    csv = tune.run_search(digits, search, "carl", threads=1)
    table = pd.read_csv(csv)
    assert list(table["candidate"]) == [0, 1]
    assert table["holdout_linear_top1"].between(10, 100).all() and table["holdout_knn20_top1"].between(10, 100).all()
    assert json.loads(table["overrides"][1]) == {"augment.crop_scale": [0.5, 1.0], "temperature": 0.2}
    md = csv.with_suffix(".md").read_text()
    assert "the preset's recipe" in md and "`augment.crop_scale: [0.5, 1.0]`" in md and "300 held-out train images" in md
    assert not (csv.parent / "carl" / "0").exists()  # checkpoints and features removed once scored

    # run again: nothing is retrained; a changed candidate is
    import clusterssl.train as train

    calls = []
    original = train.pretrain
    monkeypatch.setattr(train, "pretrain", lambda *a, **k: calls.append(a) or original(*a, **k))
    tune.run_search(digits, search, "carl", threads=1)
    assert calls == []
    search["methods"]["carl"][1] = {"temperature": 0.3}
    tune.run_search(digits, search, "carl", threads=1)
    assert len(calls) == 1 and calls[0][0]["method_params"]["carl"]["temperature"] == 0.3
    assert json.loads(pd.read_csv(csv)["overrides"][1]) == {"temperature": 0.3}

    # a preset edit (a winner adopted) changes what `{}` means: that candidate is scored again
    calls.clear()
    before = pd.read_csv(csv)["fingerprint"]
    adopted = copy.deepcopy(digits)
    adopted["method_params"]["carl"]["temperature"] = 0.2
    tune.run_search(adopted, search, "carl", threads=1)
    assert len(calls) == 1 and calls[0][0]["method_params"]["carl"]["temperature"] == 0.2
    after = pd.read_csv(csv)["fingerprint"]
    assert after[0] != before[0] and after[1] == before[1]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s["methods"]["simclr"].pop(), r"'methods.simclr' lists 1 candidates, not 2: every method gets the same number"),
        (lambda s: s["methods"].update(nosuch=[{}, {}]), r"'methods.nosuch' is not a method"),
        (lambda s: s["proxy"].pop("holdout"), r"'proxy' needs the integer keys"),
        (lambda s: s.update(extra=1), r"expected exactly the keys proxy, candidates and methods"),
    ],
)
def test_a_bad_search_file_is_one_clear_error(tmp_path, edit, message):
    search = {"proxy": dict(PROXY), "candidates": 2, "methods": {"carl": [{}, {}], "simclr": [{}, {}]}}
    edit(search)
    f = tmp_path / "search.yaml"
    f.write_text(yaml.safe_dump(search))
    with pytest.raises(UserError, match=message):
        tune.load_search(f)


def test_a_candidate_with_a_bad_key_is_refused_before_any_training(tmp_path, digits):
    search = _search(tmp_path, {"simclr": [{}, {"pretrain.epochs": 50}]})
    with pytest.raises(UserError, match=r"method_params.simclr.pretrain.*epochs"):
        tune.run_search(digits, search, "simclr", threads=1)


@pytest.mark.parametrize("round_", ["round1", "round2"])
def test_each_round_of_the_repository_search_gives_every_method_the_same_candidates_on_the_same_proxy(round_):
    search = tune.load_search(ROOT / f"config/search/{round_}.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(search["methods"]) == set(paths.ALL_METHODS)
    assert search["proxy"] == tune.load_search(ROOT / "config/search/round1.yaml")["proxy"]
    for method, candidates in search["methods"].items():
        assert len(candidates) == search["candidates"] and candidates[0] == {}  # the preset first, then the steps
        for overrides in candidates:
            tune.with_overrides(params, method, overrides, f"config/search/{round_}.yaml")  # every candidate is valid params


def test_rounds_keep_their_own_tables_and_share_the_proxy_data(tmp_path, digits):
    search = _search(tmp_path, {"carl": [{}]}, candidates=1)
    first = tune.run_search(digits, search, "carl", threads=1, source="config/search/round1.yaml")
    second = tune.run_search(digits, search, "carl", threads=1, source="config/search/round2.yaml")
    tuning = paths.results_dir(digits) / "tuning" / "digits"
    assert first == tuning / "round1" / "carl.csv" and second == tuning / "round2" / "carl.csv"
    assert (tuning / "data").is_dir() and not (tuning / "round1" / "data").exists()
    assert pd.read_csv(first)["holdout_linear_top1"].tolist() == pd.read_csv(second)["holdout_linear_top1"].tolist()
