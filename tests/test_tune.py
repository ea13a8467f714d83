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
from clusterssl.config import load_params
from clusterssl.io import UserError
from conftest import ROOT

PROXY = {"holdout": 300, "pretrain_images": 400, "epochs": 1, "probe_images": 600, "seed": 0}


@pytest.fixture
def digits(tmp_path):
    params = load_params(ROOT / "params.yaml", ROOT / "config/presets/tiny.yaml")
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
        (lambda s: s["proxy"].update(train_seeds=[0, 0]), r"'proxy.train_seeds' must be a list of distinct non-negative integers"),
        (lambda s: s["proxy"].update(train_seeds=3), r"'proxy.train_seeds' must be a list"),
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


# A search file in the format of the rounds that chose the presets (studies/recipe_search/round<N>.yaml):
# comments, and each candidate a flow mapping of dotted keys under method_params.<method>
SEARCH_FILE = """\
# round 1 of a made-up search: the preset, then one step of each kind
proxy:
  holdout: 300           # train images held out for scoring
  pretrain_images: 400
  epochs: 1
  probe_images: 600
  seed: 0
candidates: 3
methods:
  carl:
    - {}
    - {augment.crop_scale: [0.2, 1.0]}
    - {entropy_weight: 1.0}
  simclr:
    - {}
    - {augment.crop_scale: [0.2, 1.0], temperature: 0.1}
    - {pretrain.optimizer: adam, pretrain.lr: 0.0003, pretrain.weight_decay: 0.0}
"""


def test_a_search_file_lists_each_methods_candidates_as_dotted_overrides_of_its_params(tmp_path):
    f = tmp_path / "round1.yaml"
    f.write_text(SEARCH_FILE)
    search = tune.load_search(f)
    params = load_params(ROOT / "params.yaml")
    before = copy.deepcopy(params)
    assert set(search["methods"]) == {"carl", "simclr"} and search["proxy"]["train_seeds"] == [0]  # one seed unless the file says otherwise
    for method, candidates in search["methods"].items():
        assert len(candidates) == search["candidates"] and candidates[0] == {}
        for overrides in candidates:
            tune.with_overrides(params, method, overrides, str(f))  # every candidate is valid params
    adam = tune.with_overrides(params, "simclr", search["methods"]["simclr"][2], str(f))["method_params"]["simclr"]
    assert adam["pretrain"] == {"optimizer": "adam", "lr": 0.0003, "weight_decay": 0.0} and adam["temperature"] == params["method_params"]["simclr"]["temperature"]
    crops = tune.with_overrides(params, "carl", search["methods"]["carl"][1], str(f))["method_params"]["carl"]
    assert crops["augment"]["crop_scale"] == [0.2, 1.0] and params == before  # on a copy: params untouched
    f.write_text(SEARCH_FILE.replace("  seed: 0\n", "  seed: 0\n  train_seeds: [0, 1, 2]\n"))
    assert tune.load_search(f)["proxy"]["train_seeds"] == [0, 1, 2]


def test_rounds_keep_their_own_tables_and_share_the_proxy_data(tmp_path, digits):
    search = _search(tmp_path, {"carl": [{}]}, candidates=1)
    rounds = [tmp_path / "search" / f"round{n}.yaml" for n in (1, 2)]  # a round is named after its search file
    for f in rounds:
        f.parent.mkdir(exist_ok=True)
        f.write_text(yaml.safe_dump({"proxy": PROXY, "candidates": 1, "methods": {"carl": [{}]}}))
        assert tune.load_search(f) == search
    first = tune.run_search(digits, search, "carl", threads=1, source=str(rounds[0]))
    second = tune.run_search(digits, search, "carl", threads=1, source=str(rounds[1]))
    tuning = paths.results_dir(digits) / "tuning" / "digits"
    assert first == tuning / "round1" / "carl.csv" and second == tuning / "round2" / "carl.csv"
    assert (tuning / "data").is_dir() and not (tuning / "round1" / "data").exists()
    assert pd.read_csv(first)["holdout_linear_top1"].tolist() == pd.read_csv(second)["holdout_linear_top1"].tolist()


def test_a_run_scored_by_another_round_is_copied_and_other_seeds_are_trained(tmp_path, digits, monkeypatch):
    import clusterssl.train as train

    one = _search(tmp_path, {"carl": [{}]}, candidates=1)
    tune.run_search(digits, one, "carl", threads=1, source="round1.yaml")
    calls = []
    original = train.pretrain
    monkeypatch.setattr(train, "pretrain", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    seeds = _search(tmp_path, {"carl": [{}, {"temperature": 0.2}]})
    seeds["proxy"] = {**PROXY, "train_seeds": [0, 1]}
    csv = tune.run_search(digits, seeds, "carl", threads=1, source="round2.yaml")
    assert sorted(calls) == [0, 1, 1]  # candidate 0 on seed 0 is round 1's run: copied
    table = pd.read_csv(csv)
    assert [(r.candidate, r.seed) for r in table.itertuples()] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    first = pd.read_csv(tmp_path / "results" / "tuning" / "digits" / "round1" / "carl.csv")
    assert table["holdout_linear_top1"][0] == first["holdout_linear_top1"][0]
    assert table["fingerprint"][0] == first["fingerprint"][0] and table["fingerprint"].nunique() == 4
    md = csv.with_suffix(".md").read_text()
    assert "training seeds 0, 1, held-out draw of seed 0" in md and "gain over #0" in md


def _table(scores: dict[int, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"candidate": c, "seed": s, "holdout_linear_top1": v, "holdout_knn20_top1": v, "pretrain_seconds": 1.0}
                         for c, values in scores.items() for s, v in enumerate(values)])


def test_with_several_seeds_a_candidate_replaces_candidate_0_only_beyond_twice_its_standard_error():
    steady = tune.decide(_table({0: [80.0, 81.0, 82.0], 1: [80.3, 81.3, 82.3]}))  # +0.3 on every seed: s.e. 0
    assert steady["chosen"].tolist() == [False, True] and steady.loc[1, "gain"] == pytest.approx(0.3)
    # gains +0.5, -0.2, +0.3: mean 0.2, s.e. sqrt(0.13 / 3) = 0.208; 0.2 < 2 x 0.208 keeps candidate 0
    noisy = tune.decide(_table({0: [80.0, 81.0, 82.0], 1: [80.5, 80.8, 82.3]}))
    assert noisy.loc[1, "gain"] == pytest.approx(0.2) and noisy.loc[1, "gain_se"] == pytest.approx(np.sqrt(0.13 / 3))
    assert noisy["chosen"].tolist() == [True, False]
    # the best mean is the one tested: here candidate 2, a clear gain
    assert tune.decide(_table({0: [80.0, 81.0, 82.0], 1: [81.0, 80.0, 82.0], 2: [81.0, 82.0, 83.1]}))["chosen"].tolist() == [False, False, True]
    # one seed: the best score wins, however small the margin (rounds 1 and 2)
    assert tune.decide(_table({0: [80.0], 1: [80.01]}))["chosen"].tolist() == [False, True]
