"""Where k-NN20 is lost (studies/knn_analysis): per-class k-NN with the evaluation's own k-NN,
and the features' effective rank."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from studies.knn_analysis import by_class, spectrum
from studies.tests.helpers import write_scores


def test_knn_by_class_scores_each_class_with_the_evaluations_knn_and_refuses_other_saved_scores(tmp_path, monkeypatch):
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
        write_scores(tmp_path, method, 0, 0.9, knn20=0.95, knn200=0.95)
    monkeypatch.setattr(by_class, "METHODS", ("carl",))
    table = by_class.main(tmp_path, tmp_path / "by_class.csv").set_index("method")
    assert list(table.index) == ["raw_pixels", "carl"]
    assert (table[["k1", "k5", "k20", "k200"]] == 95.0).all().all()  # 19 of 20 test points at every k
    assert table.loc["carl", "T-shirt/top"] == 50.0 and (table.loc["carl", "Trouser":] == 100.0).all()
    assert pd.read_csv(tmp_path / "by_class.csv").shape == (2, 1 + 4 + 10)

    (tmp_path / "metrics/fashion_mnist/carl/seed0/knn.json").write_text(json.dumps({"metrics": {"k20_top1": 0.9, "k200_top1": 0.95}}))
    with pytest.raises(SystemExit, match="carl: k-NN20 95.00 here, 90.00 in its knn.json"):
        by_class.main(tmp_path, tmp_path / "again.csv")
    assert not (tmp_path / "again.csv").exists()


def test_knn_spectrums_effective_rank_counts_the_directions_the_features_use():
    rng = np.random.default_rng(0)
    assert spectrum.effective_rank(rng.normal(size=(4000, 8))) == pytest.approx(8, rel=0.01)  # isotropic: every direction
    line = np.outer(rng.normal(size=4000), rng.normal(size=8)) + 5.0  # one direction plus an offset, which centring removes
    assert spectrum.effective_rank(line) == pytest.approx(1, abs=1e-3)
    two = rng.normal(size=(4000, 8)) * np.array([1, 1, 0, 0, 0, 0, 0, 0])  # two equal directions
    assert spectrum.effective_rank(two) == pytest.approx(2, rel=0.01)
