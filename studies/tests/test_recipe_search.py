"""The equal-budget recipe search as committed (studies/recipe_search): every round gives every
method the same candidates on the same proxy, the presets hold what each round's rule chose, and
the full-size check of rounds 4 and 5 pairs each change by seed."""
from __future__ import annotations

import pandas as pd
import pytest

from clusterssl import tune
from clusterssl.config import load_params
from clusterssl.train import pretrain_config
from studies import METHODS
from studies.recipe_search import full_size_check
from studies.tests.helpers import ROOT, load_preset, write_scores

SEARCH = ROOT / "studies" / "recipe_search"
PARAMS = ROOT / "params.yaml"


@pytest.mark.parametrize("round_", ["round1", "round2"])
def test_each_search_round_gives_every_method_the_same_candidates_on_the_same_proxy(round_):
    search = tune.load_search(SEARCH / f"{round_}.yaml")
    params = load_params(PARAMS)
    assert set(search["methods"]) == set(METHODS)
    assert search["proxy"] == tune.load_search(SEARCH / "round1.yaml")["proxy"]
    for method, candidates in search["methods"].items():
        assert len(candidates) == search["candidates"] and candidates[0] == {}  # the preset first, then the steps
        for overrides in candidates:
            tune.with_overrides(params, method, overrides, f"studies/recipe_search/{round_}.yaml")  # every candidate is valid params


def _decision(round_: str, method: str) -> pd.DataFrame:
    """`tune.decide` on a round's table as committed in studies/recipe_search/<round>/, which must
    hold candidates 0 and 1 on seeds 0, 1 and 2 (rounds 3-5)."""
    table = pd.read_csv(SEARCH / round_ / f"{method}.csv")
    assert sorted(table["seed"].unique()) == [0, 1, 2] and sorted(table["candidate"].unique()) == [0, 1]
    return tune.decide(table)


def test_round_3_checks_each_of_round_2s_changes_and_the_presets_hold_what_it_chose():
    search = tune.load_search(SEARCH / "round3.yaml")
    round2 = tune.load_search(SEARCH / "round2.yaml")
    assert {k: v for k, v in search["proxy"].items() if k != "train_seeds"} == {k: v for k, v in round2["proxy"].items() if k != "train_seeds"}
    assert search["proxy"]["train_seeds"] == [0, 1, 2] and round2["proxy"]["train_seeds"] == [0]  # one seed unless a round says otherwise
    assert set(search["methods"]) == set(METHODS) - {"simclr", "byol"}  # round 2 kept their recipes
    for method, (before, now) in search["methods"].items():
        assert now == {} and len(before) == 1  # round 2's adoption, and the one key it changed, as it was
        (key, value), = before.items()
        undone = bool(_decision("round3", method).loc[0, "chosen"])
        for name in ("params.yaml", "config/presets/fmnist-all.yaml", "config/presets/fmnist-gpu.yaml"):
            preset = load_preset(name)["method_params"][method]
            assert (preset[key] == value) == undone, (name, method, key)  # the decision is what the presets hold


CPU_PRESETS = ("params.yaml", "config/presets/fmnist-all.yaml")


# the GPU preset's batch is its compute setting (256 for every method): round 4's step is not copied there
@pytest.mark.parametrize("round_, key, value, presets", [
    ("round4", "batch_size", 64, CPU_PRESETS),
    ("round5", "lr", 0.6, (*CPU_PRESETS, "config/presets/fmnist-gpu.yaml")),
])
def test_rounds_4_and_5_take_one_step_for_every_method_and_the_presets_hold_what_they_chose(round_, key, value, presets):
    search = tune.load_search(SEARCH / f"{round_}.yaml")
    assert search["proxy"] == tune.load_search(SEARCH / "round3.yaml")["proxy"]  # the same proxy, three seeds
    assert set(search["methods"]) == set(METHODS)
    assert all(c == [{}, {f"pretrain.{key}": value}] for c in search["methods"].values())  # the same step for all
    for method in search["methods"]:
        adopted = bool(_decision(round_, method).loc[1, "chosen"])
        for name in presets:
            preset = load_preset(name)
            assert preset["pretrain"][key] != value  # the step moves the shared setting
            setting = pretrain_config(preset, method)["pretrain"][key]  # the method's own key, or the shared one
            assert (setting == value) == adopted, (name, method)  # the decision is what the presets hold


def test_the_full_size_check_pairs_each_change_by_seed_and_says_when_runs_are_missing(tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    for seed, gain in zip([0, 1, 2], [0.01, 0.02, 0.03]):  # +1, +2, +3 points
        for method in ("swav", "coke"):
            write_scores(new, method, seed, 0.85 + gain)
            write_scores(old, method, seed, 0.85)
    write_scores(new, "byol", 0, 0.86)  # seeds 1 and 2 missing
    table = full_size_check.main(new, old, tmp_path / "check.csv").splitlines()
    swav_linear = next(line for line in table if line.startswith("| swav") and "| linear |" in line)
    # mean +2.00, s.d. 1, t(0.975, 2) = 4.303: half-width 4.303 / sqrt(3) = 2.48
    assert "| +1.00, +2.00, +3.00 | +2.00 | [-0.48, +4.48] | 87.00 ± 1.00 | 85.00 ± 0.00 |" in swav_linear
    assert any(line.startswith("| byol") and "missing runs" in line for line in table)
    rows = pd.read_csv(tmp_path / "check.csv")
    assert len(rows) == 13 and set(rows.recipe) == {"recipe", "replaced"}
