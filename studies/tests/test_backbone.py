"""A wider backbone at equal compute (studies/backbone): both variants per seed on the held-out
proxy, resumable, paired by seed, and the rule written before the runs."""
from __future__ import annotations

import pandas as pd

from clusterssl import tune
from clusterssl.config import load_params
from studies.backbone import check
from studies.tests.helpers import ROOT


def test_backbone_check_trains_each_variant_per_seed_on_the_held_out_proxy_and_pairs_them(tmp_path, monkeypatch):
    params = load_params(ROOT / "params.yaml")
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
