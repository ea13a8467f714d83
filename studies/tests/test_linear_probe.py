"""Is the linear probe converged? (studies/linear_probe): the protocol's grid inside a wider one,
on held-out train features only."""
from __future__ import annotations

import numpy as np
import pandas as pd

from studies.linear_probe import check


def test_probe_check_scores_the_protocols_grid_inside_a_wider_one_on_held_out_train_features(tmp_path):
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
