"""The full-size, three-seed check of rounds 4 and 5 (docs/tuning.md): each adopted change
against the recipe it replaced, paired by seed, on the test set's linear probe and k-NN.

    python docs/tuning/full_size_check.py   # after the two snakemake commands in docs/tuning.md

reads results/fmnist-all (the presets' recipes) and results/fmnist-all-round3 (rounds 4 and 5
undone), writes docs/tuning/full_size_check.csv (one row per method, recipe and seed) and prints
the paired differences with their 95 % Student-t intervals as a markdown table."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from clusterssl.report.stats import paired_difference, t_interval

CHANGES = {"swav": "lr 0.3 -> 0.6 (round 5)", "coke": "batch 128 -> 64 (round 4)"}
ALSO = ["byol"]  # no change to check: three seeds of its recipe
SEEDS = [0, 1, 2]
SCORES = {"linear": ("linear", "top1"), "knn20": ("knn", "k20_top1"), "knn200": ("knn", "k200_top1")}


def scores(root: Path, method: str, seed: int) -> dict | None:
    folder = root / "metrics" / "fashion_mnist" / method / f"seed{seed}"
    out = {}
    for name, (protocol, key) in SCORES.items():
        path = folder / f"{protocol}.json"
        if not path.exists():
            return None
        out[name] = 100 * json.loads(path.read_text())["metrics"][key]
    return out


def main(recipes: Path, undone: Path, csv_path: Path) -> str:
    rows, lines = [], ["| method | change | score | per seed (new - old) | mean | 95 % interval | recipe: mean ± s.d. | replaced: mean ± s.d. |",
                       "|---|---|---|---|---|---|---|---|"]
    for method in [*CHANGES, *ALSO]:
        runs = {"recipe": [scores(recipes, method, s) for s in SEEDS]}
        if method in CHANGES:
            runs["replaced"] = [scores(undone, method, s) for s in SEEDS]
        for recipe, per_seed in runs.items():
            rows += [{"method": method, "recipe": recipe, "seed": s, **{k: f"{v:.2f}" for k, v in r.items()}}
                     for s, r in zip(SEEDS, per_seed) if r]
        if not all(r for rs in runs.values() for r in rs):
            lines.append(f"| {method} | {CHANGES.get(method, '–')} | missing runs | | | | | |")
            continue
        for score in SCORES:
            mean = {k: t_interval([r[score] for r in rs]) for k, rs in runs.items()}
            summary = {k: f"{m['mean']:.2f} ± {m['std']:.2f}" for k, m in mean.items()}
            if method in CHANGES:
                new, old = [r[score] for r in runs["recipe"]], [r[score] for r in runs["replaced"]]
                d = paired_difference(new, old)
                per = ", ".join(f"{a - b:+.2f}" for a, b in zip(new, old))
                lines.append(f"| {method} | {CHANGES[method]} | {score} | {per} | {d['mean']:+.2f} | "
                             f"[{d['low']:+.2f}, {d['high']:+.2f}] | {summary['recipe']} | {summary['replaced']} |")
            else:
                lines.append(f"| {method} | – | {score} | | | | {summary['recipe']} | |")
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "recipe", "seed", *SCORES])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(csv_path)
    return "\n".join(lines)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    print(main(Path("results/fmnist-all"), Path("results/fmnist-all-round3"), here / "full_size_check.csv"))
