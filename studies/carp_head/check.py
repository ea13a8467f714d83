"""A diagnostic of the fidelity audit's item 3 (issue 12): CARL's assumed head against CARP's.

Our CARL L2-normalises the projection before the (unit-norm) prototypes and divides the
logits by temperatures (0.1 student, 0.03 target); CARP's head does neither (METHODS.md). This
trains CARL both ways on the search's proxy (round 5's: 20,000 images, 4 epochs, three
training seeds) and prints the held-out linear top-1 and 20-NN, paired by seed. It is not a
round of the search (the other methods get no such step): it asks whether the assumption is
behind CARL's 20-NN gap. The test split is never read.

    python -m studies.carp_head.check [THREADS]   # writes studies/carp_head/check.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from clusterssl import paths, tune
from clusterssl.config import load_params
from clusterssl.methods.carl import PrototypeHead

ROOT = Path(__file__).resolve().parents[2]
SEARCH = ROOT / "studies/recipe_search/round5.yaml"  # the proxy it trains on: round 5's
VARIANTS = {  # name: (overrides, L2-normalise the projection)
    "ours: normalised projection, temperatures 0.1 / 0.03": ({}, True),
    "CARP's: raw projection, no temperature": ({"temperature": 1.0, "target_temperature": 1.0}, False),
}


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    params = load_params(ROOT / "params.yaml")
    proxy = tune.load_search(SEARCH)["proxy"]
    tuning = paths.results_dir(params) / "tuning" / params["dataset"]
    data_dir = tune.proxy_data(params, proxy, tuning)
    normalised = PrototypeHead.forward
    rows = []
    for name, (overrides, normalise) in VARIANTS.items():
        PrototypeHead.forward = normalised if normalise else (lambda self, h: self.prototypes(self.projector(h)))
        for seed in proxy["train_seeds"]:
            p = tune.proxy_params(tune.with_overrides(params, "carl", overrides, "carp_head.py"), proxy, data_dir,
                                  tuning / "carp_head" / f"{len(rows)}-seed{seed}")
            rows.append({"variant": name, "seed": seed, **tune._score(p, "carl", seed, threads)})
            print(rows[-1], flush=True)
    PrototypeHead.forward = normalised
    table = pd.DataFrame(rows)
    table.to_csv(Path(__file__).with_suffix(".csv"), index=False)
    wide = table.pivot(index="seed", columns="variant", values=["holdout_linear_top1", "holdout_knn20_top1"])
    pd.set_option("display.width", 200)
    print(table.groupby("variant", sort=False)[["holdout_linear_top1", "holdout_knn20_top1", "pretrain_seconds"]].agg(["mean", "std"]).round(2))
    ours, carp = VARIANTS
    for score in ("holdout_linear_top1", "holdout_knn20_top1"):
        d = wide[score][carp] - wide[score][ours]
        print(f"{score}: CARP's minus ours, paired by seed: {d.mean():+.2f} ± {tune.standard_error(d):.2f} (s.e.); per seed {list(d.round(2))}")


if __name__ == "__main__":
    main()
