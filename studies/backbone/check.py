"""Issue 12's remaining lever, measured: a half-width backbone at the same pretraining compute.

The default preset's backbone is channels 16-32-64-256 for 10 epochs. A half-width net (channels
32-64-128-256, the plain reference SimCLR's) costs about 1.7x per pretraining step on a 2-core
CPU, so 6 epochs of it cost what 10 of the preset's do. This trains both default methods (CARL,
SimCLR) both ways at full size on held-out data: the search's held-out draw (10,000 train images,
seed 0) is scored, all 50,000 others pretrain and fit the probe, three training seeds. The test
split is never read. Everything else is the preset (studies/backbone/README.md).

    python -m studies.backbone.check run METHOD [THREADS]  # one method's six runs; resumable
    python -m studies.backbone.check table                 # writes studies/backbone/check.csv

Two `run`s side by side (carl, simclr; one thread each) took 1 h 28 min on a 2-core Intel Xeon.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from clusterssl import paths, tune
from clusterssl.config import load_params
from clusterssl.io import read_json, write_json, write_text

ROOT = Path(__file__).resolve().parents[2]
PROXY = {"holdout": 10000, "pretrain_images": 50000, "epochs": 10, "probe_images": 50000, "seed": 0}
SEEDS = [0, 1, 2]
METHODS = ["carl", "simclr"]
VARIANTS = {  # name: (backbone channels, pretraining epochs)
    "preset": ([16, 32, 64, 256], 10),  # params.yaml's when this ran (2026-12-04), written out so the record stays true
    "half width": ([32, 64, 128, 256], 6),
}


def folder(params: dict) -> Path:
    return paths.results_dir(params) / "tuning" / params["dataset"] / "backbone_check"


def run(params: dict, method: str, threads: int) -> None:
    """Train and score `method`'s runs not yet scored; one JSON row per run under rows/."""
    out = folder(params)
    data_dir = tune.proxy_data(params, PROXY, out)
    for seed in SEEDS:  # seed-major, so that an interrupted run leaves complete pairs
        for name, (channels, epochs) in VARIANTS.items():
            done = out / "rows" / f"{method}-{name.replace(' ', '_')}-seed{seed}.json"
            if done.exists():
                continue
            p = tune.proxy_params(params, PROXY, data_dir, out / "runs" / done.stem)
            p["backbone"]["channels"], p["pretrain"]["epochs"] = channels, epochs
            row = {"method": method, "variant": name, "channels": "-".join(map(str, channels)), "epochs": epochs,
                   "seed": seed, **tune._score(p, method, seed, threads)}
            write_json(done, row)
            print(row, flush=True)


def table(params: dict, csv: Path) -> str:
    """The rows as a CSV and a markdown table of the paired differences (half width - preset)."""
    rows = [read_json(f) for f in sorted((folder(params) / "rows").glob("*.json"))]
    frame = pd.DataFrame(rows).sort_values(["method", "variant", "seed"], ascending=[True, False, True])
    write_text(csv, frame.to_csv(index=False))  # atomic, like the other studies' CSVs
    preset, half = VARIANTS
    lines = ["| method | score | preset, seeds 0-2 | half width, seeds 0-2 | half width - preset, per seed | mean ± s.e. | pretraining s (preset, half) |",
             "|---|---|---|---|---|---|---|"]
    linear = {}  # method: half width - preset on the held-out linear top-1, per seed
    for method, runs in frame.groupby("method"):
        if len(runs) < len(VARIANTS) * len(SEEDS):
            lines.append(f"| {method} | incomplete: {len(runs)} of {len(VARIANTS) * len(SEEDS)} runs | | | | | |")
            continue
        wide = runs.pivot(index="seed", columns="variant")
        secs = wide["pretrain_seconds"].mean()
        diff = {score: wide[score][half] - wide[score][preset] for score in ("holdout_linear_top1", "holdout_knn20_top1")}
        for score, d in diff.items():
            lines.append(f"| {method} | {score.split('_')[1]} | {', '.join(f'{v:.2f}' for v in wide[score][preset])} | "
                         f"{', '.join(f'{v:.2f}' for v in wide[score][half])} | {', '.join(f'{v:+.2f}' for v in d)} | "
                         f"{d.mean():+.2f} ± {tune.standard_error(d):.2f} | {secs[preset]:.0f}, {secs[half]:.0f} |")
        linear[method] = diff["holdout_linear_top1"]
    if set(linear) == set(METHODS):  # the rule written before the runs (studies/backbone/README.md)
        pooled = pd.concat(linear.values(), ignore_index=True)
        moves = pooled.mean() > tune.NOISE_SE * tune.standard_error(pooled) and all(d.mean() >= 0 for d in linear.values())
        lines.append(f"\nAll {len(pooled)} pairs, linear: {pooled.mean():+.2f} ± {tune.standard_error(pooled):.2f} (s.e.); "
                     + ("the preset moves to the half width." if moves else "the preset keeps its backbone."))
    return "\n".join(lines)


if __name__ == "__main__":
    params = load_params(ROOT / "params.yaml")
    if sys.argv[1:2] == ["run"] and len(sys.argv) in (3, 4) and sys.argv[2] in METHODS:
        run(params, sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 1)
    elif sys.argv[1:] == ["table"]:
        print(table(params, Path(__file__).with_suffix(".csv")))
    else:
        sys.exit(__doc__)
