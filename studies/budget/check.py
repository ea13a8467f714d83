"""Twice the budget (studies/budget/README.md): each method's seed-0 run at 20 epochs against the same
seed at 10, on the test set, with issue 12's bars (the baselines' linear probe at 87 or more;
every method above raw pixels on the linear probe and on k-NN20).

    python -m studies.budget.check   # after the snakemake loop in studies/budget/README.md

reads results/fmnist-all-20ep (through the report's reader) and fmnist_all_10ep_seed0.csv (the
README's fmnist-all table at 10 epochs, seed 0, as measured on 2026-12-02/03: those runs are
not in git), writes check.csv (every score of each 20-epoch run so far, seeds 0-2) and
prints three markdown tables: seed 0's comparison, where a method without a 20-epoch run yet is
listed as such; seed 0's runs as the report's main table shows them (the README's fmnist-all
table); and each method with several seeds, their mean, s.d. and 95 % t interval."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from clusterssl import paths
from clusterssl.io import write_text
from clusterssl.report import collect, main_cells, summarise, tables
from clusterssl.report.stats import t_interval
from studies import METHODS, PROTOCOLS, studied_columns

BASELINES = {"simclr", "swav", "byol", "moco_v2"}  # issue 12: linear >= 87.0
BASELINE_LINEAR = 87.0
# short name -> the report's column
SCORES = {"linear": "linear_top1", "knn20": "knn20_top1", "knn200": "knn200_top1"}
# the frozen-feature protocols only: semi-supervised and transfer were not run for all nine
FROZEN = {"semisup": {"fractions": []}, "transfer": {"datasets": []}, "knn": {"k": [20, 200]}}
# the README's columns: the report's main table less head ARI
README_COLUMNS = ["method", *(header for column, *_, header in studied_columns() if column != "head_ari"), "pretrain min"]
# the 10-epoch side, committed: the README's fmnist-all table at 10 epochs, seed 0 (those runs are not in git)
TEN_EPOCHS = Path(__file__).resolve().parent / "fmnist_all_10ep_seed0.csv"


def bars_missed(row: dict, pixels: dict, method: str) -> str:
    """Issue 12's bars this run misses, or "none"."""
    missed = [f"{s} <= raw pixels" for s in ("linear", "knn20") if row[s] <= pixels[s]]
    if method in BASELINES and row["linear"] < BASELINE_LINEAR:
        missed.append(f"linear < {BASELINE_LINEAR:g}")
    return ", ".join(missed) or "none"


def runs(root: Path, seed: int) -> pd.DataFrame:
    """Every score of each run under `root` with all three frozen-feature metrics files (raw
    pixels included when evaluated there), one row per method, in the report's order."""
    params = {"paths": {"results": root}, "dataset": "fashion_mnist", "methods": list(METHODS),
              "seeds": [seed], "eval": FROZEN}
    done = [m for m in paths.evaluated_methods(params)
            if all(paths.metrics_file(params, m, seed, e).exists() for e in PROTOCOLS)]
    return collect(params, done, set(PROTOCOLS))


def main(twenty: Path, ten_csv: Path, csv_path: Path, seeds=(0, 1, 2)) -> str:
    """Seed 0's comparison; every seed's scores go to `csv_path`."""
    ten = pd.read_csv(ten_csv).set_index("method")
    pixels = ten.loc[paths.RAW_PIXELS, list(SCORES)].to_dict()
    every = pd.concat([r for r in (runs(twenty, seed) for seed in seeds) if len(r)], ignore_index=True)
    write_text(csv_path, every.to_csv(index=False))  # unrounded: the tables round once
    after = every[every["seed"] == seeds[0]].set_index("method")
    lines = ["| method | linear, 10 -> 20 epochs | k-NN20 | k-NN200 | pretraining min (20) | bars missed at 10 | at 20 |",
             "|---|---|---|---|---|---|---|"]
    for method in METHODS:
        before = ten.loc[method, list(SCORES)].to_dict()
        if method not in after.index:
            lines.append(f"| {method} | {before['linear']:.2f} -> not run yet | | | | {bars_missed(before, pixels, method)} | |")
            continue
        now = {short: after.loc[method, column] for short, column in SCORES.items()}
        cells = [f"{before[s]:.2f} -> {now[s]:.2f} ({now[s] - before[s]:+.2f})" for s in SCORES]
        lines.append(f"| {method} | {' | '.join(cells)} | {after.loc[method, 'pretrain_minutes']:.1f} | "
                     f"{bars_missed(before, pixels, method)} | {bars_missed(now, pixels, method)} |")
    return "\n".join(lines)


def results_table(csv_path: Path, seed: int = 0) -> str:
    """One seed's saved runs as the report's main table prints them, in the README's columns."""
    saved = pd.read_csv(csv_path)
    cells = main_cells(summarise(saved[saved["seed"] == seed]), studied_columns())
    return tables.to_markdown(cells[README_COLUMNS])


def seeds_table(csv_path: Path) -> str:
    """Each method with more than one saved seed: its scores per seed, mean ± s.d. and 95 %
    Student-t interval."""
    saved = pd.read_csv(csv_path)
    lines = ["| method | score | per seed | mean ± s.d. | 95 % interval |", "|---|---|---|---|---|"]
    for method, group in saved.groupby("method", sort=False):
        if len(group) < 2:
            continue
        for short, column in SCORES.items():
            values = group.sort_values("seed")[column]
            t = t_interval(values)
            lines.append(f"| {method} | {short} | {', '.join(f'{v:.2f}' for v in values)} (seeds {', '.join(map(str, sorted(group.seed)))}) | "
                         f"{t['mean']:.2f} ± {t['std']:.2f} | [{t['low']:.2f}, {t['high']:.2f}] |")
    return "\n".join(lines)


if __name__ == "__main__":
    csv = TEN_EPOCHS.parent / "check.csv"
    print(main(Path("results/fmnist-all-20ep"), TEN_EPOCHS, csv))
    print()
    print(results_table(csv))
    print()
    print(seeds_table(csv))
