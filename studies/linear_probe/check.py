"""Is the linear probe converged? A check on held-out train features only (never the test set).

The evaluation's probe (`eval.linear`: AdamW, cosine decay, 30 epochs, learning rate chosen from
[0.001, 0.01] on a held-out 10 % of the train features) is refitted here on the same fit / val
split with more epochs and more rates. If a longer or finer search scored clearly higher on the
held-out part, the protocol would under-report every encoder, and SimCLR's 88.0 bar (issue 12)
could be a matter of the probe, not of the features.

    python -m studies.linear_probe.check [results/features/fashion_mnist] [THREADS]   # writes studies/linear_probe/check.csv

Reads each row's seed*/fashion_mnist.npz (`clusterssl embed`): CARL and SimCLR over their seeds,
raw pixels once (their features do not depend on the seed)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clusterssl.config import load_params
from clusterssl.evaluate.protocols import held_out_split, linear_probe

ROOT = Path(__file__).resolve().parents[2]
GRID = [(epochs, lr) for epochs in (30, 100) for lr in (0.001, 0.003, 0.01, 0.03)]


def check(folder: Path, out: Path) -> pd.DataFrame:
    """Every grid point's held-out score to `out`; returns the best of each grid per row and seed."""
    lin = load_params(ROOT / "params.yaml")["eval"]["linear"]
    rows = []
    for method in ("carl", "simclr", "raw_pixels"):
        files = sorted(folder.glob(f"{method}/seed*/fashion_mnist.npz"))[: 1 if method == "raw_pixels" else None]
        for f in files:
            seed = int(f.parent.name[4:])
            z = np.load(f)
            x, y = z["train_features"], z["train_labels"]
            val, fit = held_out_split(len(x), lin["val_fraction"], seed)  # the split select_and_probe makes
            for epochs, lr in GRID:
                r = linear_probe(x[fit], y[fit], x[val], y[val], epochs, lr, lin["weight_decay"], lin["batch_size"], seed)
                rows.append({"method": method, "seed": seed, "epochs": epochs, "lr": lr,
                             "val_top1": round(100 * r["top1"], 2), "fit_top1": round(100 * r["train_top1"], 2)})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out, index=False)
    preset = table[(table.epochs == lin["epochs"]) & table.lr.isin(lin["lr"])]
    best = lambda t: t.groupby(["method", "seed"])["val_top1"].max()
    summary = pd.DataFrame({"the protocol's grid": best(preset), "the wider grid": best(table)})
    summary["gain"] = (summary["the wider grid"] - summary["the protocol's grid"]).round(2)
    return summary


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "results/features/fashion_mnist")
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    print(check(folder, Path(__file__).with_suffix(".csv")).to_string())


if __name__ == "__main__":
    main()
