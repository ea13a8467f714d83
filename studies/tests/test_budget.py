"""Twice the budget (studies/budget): each 20-epoch run against its 10-epoch row, with the bars
it misses; the saved runs in the report's columns; several seeds summarised."""
from __future__ import annotations

import pandas as pd

from clusterssl import paths
from studies import METHODS
from studies.budget import check
from studies.tests.helpers import write_metrics, write_scores


def test_the_budget_check_compares_each_run_with_its_10_epoch_row_and_names_the_bars_it_misses(tmp_path):
    ten = tmp_path / "ten.csv"
    ten.write_text("method,linear,knn200,knn20\nraw_pixels,84.47,78.85,84.47\n"
                   + "".join(f"{m},86.50,80.00,84.00\n" for m in METHODS))
    twenty = tmp_path / "twenty"
    for method, linear, knn20 in (("byol", 0.8725, 0.8450), ("carl", 0.8800, 0.8440)):
        write_scores(twenty, method, 0, linear, knn20, knn200=0.81)
        head = {"head": {"acc": 0.02, "nmi": 0.4, "ari": 0.01, "clusters_used": 993}} if method == "carl" else {}
        write_metrics(twenty, method, 0, "cluster", {"kmeans": {"acc": 0.7, "nmi": 0.6, "ari": 0.5}, **head})
        run = twenty / "runs" / "fashion_mnist" / method / "seed0"
        run.mkdir(parents=True)
        (run / "history.csv").write_text("epoch,seconds\n1,60\n2,90\n")
    write_scores(twenty, "swav", 0, 0.9)  # no cluster.json: not a finished run
    for seed, linear in ((1, 0.8625), (2, 0.8825)):  # BYOL's other two seeds: 86.25, 87.25, 88.25
        write_scores(twenty, "byol", seed, linear, 0.8450, knn200=0.81)
        write_metrics(twenty, "byol", seed, "cluster", {"kmeans": {"acc": 0.7, "nmi": 0.6, "ari": 0.5}})
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
    assert "not run yet" in row["swav"] and len(row) == len(METHODS)
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


def test_the_10_epoch_side_is_committed_next_to_the_check():
    ten = pd.read_csv(check.TEN_EPOCHS).set_index("method")
    assert set(ten.index) == {paths.RAW_PIXELS, *METHODS} and {"linear", "knn20", "knn200"} <= set(ten.columns)
