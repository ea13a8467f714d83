"""Where k-NN20 is lost against raw pixels (studies/knn_analysis/README.md): the evaluation's
weighted k-NN on each method's saved seed-0 features at 20 epochs, per class and at other k.

    python -m studies.knn_analysis.by_class   # after the snakemake loop in studies/budget/README.md

reads results/fmnist-all-20ep/features (raw pixels included), checks that its k = 20 and 200
scores equal the runs' knn.json (so this is the evaluation's protocol, not another), writes
studies/knn_analysis/by_class.csv (one row per method: top-1 at each k, then k-NN20 recall per class, in percent)
and prints it as a markdown table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clusterssl import paths
from clusterssl.config import load_params
from clusterssl.data.fashion_mnist import CLASSES
from clusterssl.io import read_json, write_text
from clusterssl.knn import knn_predict_ks
from clusterssl.report import tables
from studies import METHODS

KS = (1, 5, 20, 200)
ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "config/presets/fmnist-all.yaml"  # the runs' config but for paths (merged onto params.yaml)


def scores(features: dict, temperature: float) -> dict:
    """Top-1 % at each k and k-NN20 recall % per class."""
    train, test = (features[f"{s}_features"] for s in ("train", "test"))
    y = np.asarray(features["test_labels"])
    predicted = knn_predict_ks(train, features["train_labels"], test, list(KS), temperature)
    return {**{f"k{k}": 100 * float((p == y).mean()) for k, p in predicted.items()},
            **{name: 100 * float((predicted[20][y == c] == c).mean()) for c, name in enumerate(CLASSES)}}


def main(root: Path, csv_path: Path, seed: int = 0) -> pd.DataFrame:
    params = {"paths": {"results": root}, "dataset": "fashion_mnist", "methods": list(METHODS)}
    temperature = load_params(ROOT / "params.yaml", PRESET)["eval"]["knn"]["temperature"]
    rows = []
    for method in paths.evaluated_methods(params):
        row = scores(np.load(paths.features_file(params, method, seed)), temperature)
        saved = read_json(paths.metrics_file(params, method, seed, "knn"))["metrics"]
        for k in (20, 200):
            if abs(row[f"k{k}"] - 100 * saved[f"k{k}_top1"]) > 0.01:
                raise SystemExit(f"{method}: k-NN{k} {row[f'k{k}']:.2f} here, {100 * saved[f'k{k}_top1']:.2f} in its knn.json")
        rows.append({"method": method, **row})
    table = pd.DataFrame(rows)
    write_text(csv_path, table.to_csv(index=False))
    return table


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    table = main(Path("results/fmnist-all-20ep"), here / "by_class.csv")
    print(tables.to_markdown(table.set_index("method").map("{:.1f}".format).reset_index()))
