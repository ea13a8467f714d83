"""Twice the budget (docs/tuning.md): each method's seed-0 run at 20 epochs against the same
seed at 10, on the test set, with issue 12's bars (the baselines' linear probe at 87 or more;
every method above raw pixels on the linear probe and on k-NN20).

    python docs/tuning/budget_check.py   # after the snakemake loop in docs/tuning.md

reads results/fmnist-all-20ep and fmnist_all_10ep_seed0.csv (the README's fmnist-all table at
10 epochs, seed 0, as measured on 2026-12-02/03: those runs are not in git), writes
budget_check.csv (the 20-epoch scores, one row per method run so far) and prints the
comparison as a markdown table; a method without a 20-epoch run yet is listed as such."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from clusterssl import paths
from clusterssl.io import write_text
from full_size_check import SCORES, scores  # the same scores, read the same way

BASELINES = {"simclr", "swav", "byol", "moco_v2"}  # issue 12: linear >= 87.0
BASELINE_LINEAR = 87.0


def bars_missed(row: dict, pixels: dict, method: str) -> str:
    """Issue 12's bars this run misses, or "none"."""
    missed = [f"{s} <= raw pixels" for s in ("linear", "knn20") if row[s] <= pixels[s]]
    if method in BASELINES and row["linear"] < BASELINE_LINEAR:
        missed.append(f"linear < {BASELINE_LINEAR:g}")
    return ", ".join(missed) or "none"


def pretrain_minutes(root: Path, method: str, seed: int) -> float | None:
    history = paths.run_files({"paths": {"results": root}, "dataset": "fashion_mnist"}, method, seed)[1]
    return pd.read_csv(history)["seconds"].sum() / 60 if history.exists() else None


def main(twenty: Path, ten_csv: Path, csv_path: Path, seed: int = 0) -> str:
    ten = pd.read_csv(ten_csv).set_index("method")
    pixels = ten.loc[paths.RAW_PIXELS, list(SCORES)].to_dict()
    lines = ["| method | linear, 10 -> 20 epochs | k-NN20 | k-NN200 | pretraining min (20) | bars missed at 10 | at 20 |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    for method in paths.ALL_METHODS:
        before = ten.loc[method, list(SCORES)].to_dict()
        after = scores(twenty, method, seed)
        if after is None:
            lines.append(f"| {method} | {before['linear']:.2f} -> not run yet | | | | {bars_missed(before, pixels, method)} | |")
            continue
        minutes = pretrain_minutes(twenty, method, seed)
        rows.append({"method": method, "seed": seed, **{k: f"{v:.2f}" for k, v in after.items()},
                     "pretrain_minutes": "" if minutes is None else f"{minutes:.1f}"})
        cells = [f"{before[s]:.2f} -> {after[s]:.2f} ({after[s] - before[s]:+.2f})" for s in SCORES]
        lines.append(f"| {method} | {' | '.join(cells)} | {rows[-1]['pretrain_minutes']} | "
                     f"{bars_missed(before, pixels, method)} | {bars_missed(after, pixels, method)} |")
    write_text(csv_path, pd.DataFrame(rows, columns=["method", "seed", *SCORES, "pretrain_minutes"]).to_csv(index=False))
    return "\n".join(lines)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    print(main(Path("results/fmnist-all-20ep"), here / "fmnist_all_10ep_seed0.csv", here / "budget_check.csv"))
