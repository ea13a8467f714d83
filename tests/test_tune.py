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
from clusterssl.train import pretrain_config
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


@pytest.mark.parametrize("round_", ["round1", "round2"])
def test_each_search_round_gives_every_method_the_same_candidates_on_the_same_proxy(round_):
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


def _decision(round_: str, method: str) -> pd.DataFrame:
    """`tune.decide` on a round's table as committed in docs/tuning/, which must hold candidates
    0 and 1 on seeds 0, 1 and 2 (rounds 3-5)."""
    table = pd.read_csv(ROOT / "docs" / "tuning" / round_ / f"{method}.csv")
    assert sorted(table["seed"].unique()) == [0, 1, 2] and sorted(table["candidate"].unique()) == [0, 1]
    return tune.decide(table)


def test_round_3_checks_each_of_round_2s_changes_and_the_presets_hold_what_it_chose():
    search = tune.load_search(ROOT / "config/search/round3.yaml")
    round2 = tune.load_search(ROOT / "config/search/round2.yaml")
    assert {k: v for k, v in search["proxy"].items() if k != "train_seeds"} == {k: v for k, v in round2["proxy"].items() if k != "train_seeds"}
    assert search["proxy"]["train_seeds"] == [0, 1, 2] and round2["proxy"]["train_seeds"] == [0]  # one seed unless a round says otherwise
    assert set(search["methods"]) == set(paths.ALL_METHODS) - {"simclr", "byol"}  # round 2 kept their recipes
    for method, (before, now) in search["methods"].items():
        assert now == {} and len(before) == 1  # round 2's adoption, and the one key it changed, as it was
        (key, value), = before.items()
        undone = bool(_decision("round3", method).loc[0, "chosen"])
        for name in ("params.yaml", "config/presets/fmnist-all.yaml", "config/presets/fmnist-gpu.yaml"):
            preset = yaml.safe_load((ROOT / name).read_text())["method_params"][method]
            assert (preset[key] == value) == undone, (name, method, key)  # the decision is what the presets hold


CPU_PRESETS = ("params.yaml", "config/presets/fmnist-all.yaml")


# the GPU preset's batch is its compute setting (256 for every method): round 4's step is not copied there
@pytest.mark.parametrize("round_, key, value, presets", [
    ("round4", "batch_size", 64, CPU_PRESETS),
    ("round5", "lr", 0.6, (*CPU_PRESETS, "config/presets/fmnist-gpu.yaml")),
])
def test_rounds_4_and_5_take_one_step_for_every_method_and_the_presets_hold_what_they_chose(round_, key, value, presets):
    search = tune.load_search(ROOT / f"config/search/{round_}.yaml")
    assert search["proxy"] == tune.load_search(ROOT / "config/search/round3.yaml")["proxy"]  # the same proxy, three seeds
    assert set(search["methods"]) == set(paths.ALL_METHODS)
    assert all(c == [{}, {f"pretrain.{key}": value}] for c in search["methods"].values())  # the same step for all
    for method in search["methods"]:
        adopted = bool(_decision(round_, method).loc[1, "chosen"])
        for name in presets:
            preset = yaml.safe_load((ROOT / name).read_text())
            assert preset["pretrain"][key] != value  # the step moves the shared setting
            setting = pretrain_config(preset, method)["pretrain"][key]  # the method's own key, or the shared one
            assert (setting == value) == adopted, (name, method)  # the decision is what the presets hold


def _docs_script(name, monkeypatch):
    """A script of docs/tuning/, imported as its own command line would (its folder on the path)."""
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "docs/tuning"))
    return importlib.import_module(name)


def _write_scores(root, method, seed, linear, knn20=0.8, knn200=0.7):
    folder = root / "metrics" / "fashion_mnist" / method / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "linear.json").write_text(json.dumps({"metrics": {"top1": linear}}))
    (folder / "knn.json").write_text(json.dumps({"metrics": {"k20_top1": knn20, "k200_top1": knn200}}))


def test_the_full_size_check_pairs_each_change_by_seed_and_says_when_runs_are_missing(tmp_path, monkeypatch):
    check = _docs_script("full_size_check", monkeypatch)
    new, old = tmp_path / "new", tmp_path / "old"
    for seed, gain in zip([0, 1, 2], [0.01, 0.02, 0.03]):  # +1, +2, +3 points
        for method in ("swav", "coke"):
            _write_scores(new, method, seed, 0.85 + gain)
            _write_scores(old, method, seed, 0.85)
    _write_scores(new, "byol", 0, 0.86)  # seeds 1 and 2 missing
    table = check.main(new, old, tmp_path / "check.csv").splitlines()
    swav_linear = next(line for line in table if line.startswith("| swav") and "| linear |" in line)
    # mean +2.00, s.d. 1, t(0.975, 2) = 4.303: half-width 4.303 / sqrt(3) = 2.48
    assert "| +1.00, +2.00, +3.00 | +2.00 | [-0.48, +4.48] | 87.00 ± 1.00 | 85.00 ± 0.00 |" in swav_linear
    assert any(line.startswith("| byol") and "missing runs" in line for line in table)
    rows = pd.read_csv(tmp_path / "check.csv")
    assert len(rows) == 13 and set(rows.recipe) == {"recipe", "replaced"}


@pytest.mark.filterwarnings("ignore:Precision loss")  # the constant default rows, on purpose
def test_the_reference_check_gives_each_recipe_its_interval_and_their_welch_difference(tmp_path, monkeypatch):
    check = _docs_script("reference_check", monkeypatch)
    reference, default = tmp_path / "reference", tmp_path / "default"
    for seed, linear in zip([0, 1, 2], [0.88, 0.89, 0.90]):
        _write_scores(reference, "simclr", seed, linear)
        _write_scores(default, "simclr", seed, 0.87)
        for root, seconds in ((reference, 360), (default, 300)):
            run = root / "runs" / "fashion_mnist" / "simclr" / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "history.csv").write_text(f"epoch,seconds\n1,{seconds / 2}\n2,{seconds / 2}\n")
    table = check.main(reference, default, tmp_path / "check.csv").splitlines()
    row = {line.split(" | ")[0].lstrip("| "): line for line in table[2:]}
    # reference 89 ± 1 (t(0.975, 2) / sqrt(3) = 2.48), default 87 ± 0: Welch's interval has the
    # reference's 2 degrees of freedom and its standard error
    assert row["linear"] == ("| linear | 88.00, 89.00, 90.00 | 89.00 [86.52, 91.48] | 87.00, 87.00, 87.00 | "
                             "87.00 [87.00, 87.00] | +2.00 [-0.48, +4.48] | 88.0 |")
    assert row["pretrain_minutes"].startswith("| pretrain_minutes | 6.00, 6.00, 6.00 |") and "| +1.00 [" in row["pretrain_minutes"]
    assert len(pd.read_csv(tmp_path / "check.csv")) == 6
    (reference / "metrics" / "fashion_mnist" / "simclr" / "seed2" / "knn.json").unlink()
    assert check.main(reference, default, tmp_path / "check.csv") == "missing runs: reference seed 2"


def test_the_budget_check_compares_each_run_with_its_10_epoch_row_and_names_the_bars_it_misses(tmp_path, monkeypatch):
    check = _docs_script("budget_check", monkeypatch)
    ten = tmp_path / "ten.csv"
    ten.write_text("method,linear,knn200,knn20\nraw_pixels,84.47,78.85,84.47\n"
                   + "".join(f"{m},86.50,80.00,84.00\n" for m in paths.ALL_METHODS))
    twenty = tmp_path / "twenty"
    for method, linear, knn20 in (("byol", 0.8725, 0.8450), ("carl", 0.8800, 0.8440)):
        _write_scores(twenty, method, 0, linear, knn20, knn200=0.81)
        folder = twenty / "metrics" / "fashion_mnist" / method / "seed0"
        head = {"head": {"acc": 0.02, "nmi": 0.4, "ari": 0.01, "clusters_used": 993}} if method == "carl" else {}
        (folder / "cluster.json").write_text(json.dumps({"metrics": {"kmeans": {"acc": 0.7, "nmi": 0.6, "ari": 0.5}, **head}}))
        run = twenty / "runs" / "fashion_mnist" / method / "seed0"
        run.mkdir(parents=True)
        (run / "history.csv").write_text("epoch,seconds\n1,60\n2,90\n")
    _write_scores(twenty, "swav", 0, 0.9)  # no cluster.json: not a finished run
    for seed, linear in ((1, 0.8625), (2, 0.8825)):  # BYOL's other two seeds: 86.25, 87.25, 88.25
        _write_scores(twenty, "byol", seed, linear, 0.8450, knn200=0.81)
        (twenty / "metrics" / "fashion_mnist" / "byol" / f"seed{seed}" / "cluster.json").write_text(
            json.dumps({"metrics": {"kmeans": {"acc": 0.7, "nmi": 0.6, "ari": 0.5}}}))
        run = twenty / "runs" / "fashion_mnist" / "byol" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "history.csv").write_text("epoch,seconds\n1,60\n")

    csv = tmp_path / "budget.csv"
    table = check.main(twenty, ten, csv).splitlines()
    row = {line.split(" | ")[0].lstrip("| "): line for line in table[2:]}
    assert "| 86.50 -> 87.25 (+0.75) | 84.00 -> 84.50 (+0.50) | 80.00 -> 81.00 (+1.00) | 2.5 |" in row["byol"]
    # a baseline below 87 and below raw pixels on k-NN20 at 10 epochs, clear of both at 20
    assert row["byol"].endswith("| knn20 <= raw pixels, linear < 87 | none |")
    assert row["carl"].endswith("| knn20 <= raw pixels | knn20 <= raw pixels |")  # 84.40 < 84.47; not a baseline
    assert "not run yet" in row["swav"] and len(row) == len(paths.ALL_METHODS)
    saved = pd.read_csv(csv)
    assert list(zip(saved.method, saved.seed)) == [("carl", 0), ("byol", 0), ("byol", 1), ("byol", 2)]
    assert list(saved.pretrain_minutes) == [2.5, 2.5, 1.0, 1.0] and list(saved.epochs) == [2, 2, 1, 1]
    assert list(saved.kmeans_acc) == [0.7] * 4

    readme = check.results_table(csv).splitlines()  # the report's cells, from the saved CSV alone
    assert readme[0].startswith("| method | linear top-1 % |") and readme[0].endswith("| head clusters used | pretrain min |")
    assert readme[2] == "| carl | 88.00 | 81.00 | 84.40 | 0.700 | 0.600 | 0.500 | 0.020 | 0.400 | 993 | 2.5 |"
    assert readme[3] == "| byol | 87.25 | 81.00 | 84.50 | 0.700 | 0.600 | 0.500 | – | – | – | 2.5 |"
    # only seed 0 in the README's table; the methods with several seeds summarised: mean 87.25,
    # s.d. 1, half-width t(0.975, 2) / sqrt(3) = 2.48
    assert len(readme) == 4
    seeds = check.seeds_table(csv).splitlines()
    assert seeds[2] == "| byol | linear | 87.25, 86.25, 88.25 (seeds 0, 1, 2) | 87.25 ± 1.00 | [84.77, 89.73] |"
    assert len(seeds) == 2 + 3 and not any(line.startswith("| carl") for line in seeds)


def test_knn_by_class_scores_each_class_with_the_evaluations_knn_and_refuses_other_saved_scores(tmp_path, monkeypatch):
    check = _docs_script("knn_by_class", monkeypatch)
    eye = np.eye(10, dtype=np.float32)
    # three train points per class at its own axis; two test points per class, one of class 0's on class 1's axis
    train_y, test_y = np.repeat(np.arange(10), 3), np.repeat(np.arange(10), 2)
    test_x = eye[test_y].copy()
    test_x[0] = eye[1]
    for method in ("raw_pixels", "carl"):
        folder = tmp_path / "features" / "fashion_mnist" / method / "seed0"
        folder.mkdir(parents=True)
        np.savez(folder / "fashion_mnist.npz", train_features=eye[train_y], train_labels=train_y,
                 test_features=test_x, test_labels=test_y)
        _write_scores(tmp_path, method, 0, 0.9, knn20=0.95, knn200=0.95)
    monkeypatch.setattr(check.paths, "ALL_METHODS", ("carl",))
    table = check.main(tmp_path, tmp_path / "by_class.csv").set_index("method")
    assert list(table.index) == ["raw_pixels", "carl"]
    assert (table[["k1", "k5", "k20", "k200"]] == 95.0).all().all()  # 19 of 20 test points at every k
    assert table.loc["carl", "T-shirt/top"] == 50.0 and (table.loc["carl", "Trouser":] == 100.0).all()
    assert pd.read_csv(tmp_path / "by_class.csv").shape == (2, 1 + 4 + 10)

    (tmp_path / "metrics/fashion_mnist/carl/seed0/knn.json").write_text(json.dumps({"metrics": {"k20_top1": 0.9, "k200_top1": 0.95}}))
    with pytest.raises(SystemExit, match="carl: k-NN20 95.00 here, 90.00 in its knn.json"):
        check.main(tmp_path, tmp_path / "again.csv")
    assert not (tmp_path / "again.csv").exists()


def test_probe_check_scores_the_protocols_grid_inside_a_wider_one_on_held_out_train_features(tmp_path, monkeypatch):
    check = _docs_script("probe_check", monkeypatch)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    for method, seeds in (("carl", [0, 1]), ("raw_pixels", [0, 1])):
        for seed in seeds:
            folder = tmp_path / method / f"seed{seed}"
            folder.mkdir(parents=True)
            x = (np.eye(3)[y] * 2 + rng.normal(size=(len(y), 3))).astype(np.float32)
            # a test split that would score 0 if it were read: the check must use train features only
            np.savez(folder / "fashion_mnist.npz", train_features=x, train_labels=y,
                     test_features=x[:5], test_labels=(y[:5] + 1) % 3)
    summary = check.check(tmp_path, tmp_path / "grid.csv")
    grid = pd.read_csv(tmp_path / "grid.csv")
    assert len(grid) == 3 * len(check.GRID)  # CARL's two seeds, raw pixels' first only
    assert set(summary.index) == {("carl", 0), ("carl", 1), ("raw_pixels", 0)}
    assert (summary["gain"] >= 0).all()  # the wider grid holds the protocol's
    protocol = grid[(grid.epochs == 30) & grid.lr.isin([0.001, 0.01])].groupby(["method", "seed"])["val_top1"].max()
    assert (summary["the protocol's grid"] == protocol).all()
    assert (summary["the wider grid"] > 50).all()  # held-out train points of separable classes, not the flipped test labels


def test_backbone_check_trains_each_variant_per_seed_on_the_held_out_proxy_and_pairs_them(tmp_path, monkeypatch):
    check = _docs_script("backbone_check", monkeypatch)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    trained = []

    def fake_score(p, method, seed, threads):  # the half width gains 1 point on seeds 0-1, 2 on seed 2
        trained.append((method, tuple(p["backbone"]["channels"]), p["pretrain"]["epochs"], seed, p["data"]["max_train"], p["paths"]["data"]))
        half = p["backbone"]["channels"][0] == 32
        return {"holdout_linear_top1": 85.0 + half * (1 + (seed == 2)), "holdout_knn20_top1": 84.0, "pretrain_seconds": 60.0}

    monkeypatch.setattr(tune, "proxy_data", lambda params, proxy, out: out / "data")
    monkeypatch.setattr(tune, "_score", fake_score)
    check.run(params, "simclr", 1)
    assert len(trained) == 6
    assert {t[1:3] for t in trained} == {((16, 32, 64, 256), 10), ((32, 64, 128, 256), 6)}
    assert {t[4] for t in trained} == {50000}  # every image not held out pretrains
    assert all(t[5].endswith("backbone_check/data") for t in trained)  # the held-out proxy's data, not the prepared train split
    check.run(params, "simclr", 1)  # resumes: nothing left to train
    assert len(trained) == 6
    (check.folder(params) / "rows" / "simclr-preset-seed2.json").unlink()
    out = check.table(params, tmp_path / "t.csv")
    assert "| simclr | incomplete: 5 of 6 runs |" in out
    check.run(params, "simclr", 1)
    assert trained[-1][1:4] == ((16, 32, 64, 256), 10, 2)
    out = check.table(params, tmp_path / "t.csv")
    assert "| simclr | linear | 85.00, 85.00, 85.00 | 86.00, 86.00, 87.00 | +1.00, +1.00, +2.00 | +1.33 ± 0.33 | 60, 60 |" in out
    assert len(pd.read_csv(tmp_path / "t.csv")) == 6
    assert "All " not in out  # the rule waits for both default methods
    check.run(params, "carl", 1)
    out = check.table(params, tmp_path / "t.csv")
    assert "All 6 pairs, linear: +1.33 ± 0.21 (s.e.); the preset moves to the half width." in out


def test_knn_spectrums_effective_rank_counts_the_directions_the_features_use(monkeypatch):
    spectrum = _docs_script("knn_spectrum", monkeypatch)
    rng = np.random.default_rng(0)
    assert spectrum.effective_rank(rng.normal(size=(4000, 8))) == pytest.approx(8, rel=0.01)  # isotropic: every direction
    line = np.outer(rng.normal(size=4000), rng.normal(size=8)) + 5.0  # one direction plus an offset, which centring removes
    assert spectrum.effective_rank(line) == pytest.approx(1, abs=1e-3)
    two = rng.normal(size=(4000, 8)) * np.array([1, 1, 0, 0, 0, 0, 0, 0])  # two equal directions
    assert spectrum.effective_rank(two) == pytest.approx(2, rel=0.01)
