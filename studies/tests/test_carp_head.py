"""CARP's head against ours (studies/carp_head): it trains on round 5's proxy."""
from __future__ import annotations

from clusterssl import tune
from studies.carp_head import check
from studies.tests.helpers import STUDIES


def test_carp_head_trains_on_round_5s_proxy_with_three_seeds():
    assert check.SEARCH == STUDIES / "recipe_search" / "round5.yaml"
    proxy = tune.load_search(check.SEARCH)["proxy"]
    assert proxy["train_seeds"] == [0, 1, 2] and (proxy["pretrain_images"], proxy["epochs"], proxy["holdout"]) == (20000, 4, 10000)
    assert set(check.VARIANTS) == {"ours: normalised projection, temperatures 0.1 / 0.03", "CARP's: raw projection, no temperature"}
