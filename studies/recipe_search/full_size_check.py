"""The full-size, three-seed check of rounds 4 and 5 (studies/recipe_search/README.md): each adopted change
against the recipe it replaced, paired by seed, on the test set's linear probe and k-NN.

    python -m studies.recipe_search.full_size_check   # after the two snakemake commands in its README

reads results/fmnist-all-10ep (the presets' recipes at 10 epochs, fmnist-all's budget then) and
results/fmnist-all-round3 (rounds 4 and 5 undone), writes studies/recipe_search/full_size_check.csv (one
row per method, recipe and seed) and prints the paired differences with their 95 % Student-t
intervals as a markdown table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from clusterssl import paths
from clusterssl.io import read_json, write_text
from clusterssl.report import _dig
from clusterssl.report.stats import paired_difference, t_interval
from studies import studied_columns

CHANGES = {"swav": "lr 0.3 -> 0.6 (round 5)", "coke": "batch 128 -> 64 (round 4)"}
ALSO = ["byol"]  # no change to check: three seeds of its recipe
SEEDS = [0, 1, 2]
# short name -> the report's column (its metrics file and the keys inside it)
SCORES = {"linear": "linear_top1", "knn20": "knn20_top1", "knn200": "knn200_top1"}
WHERE = {column: (evaluation, keys) for column, evaluation, keys, *_ in studied_columns()}


def scores(root: Path, method: str, seed: int) -> dict | None:
    """The run's scores in percent, or None when one of its metrics files is missing."""
    params = {"paths": {"results": root}, "dataset": "fashion_mnist"}
    evaluations = {WHERE[column][0] for column in SCORES.values()}  # each file read once
    files = {e: paths.metrics_file(params, method, seed, e) for e in evaluations}
    if not all(f.exists() for f in files.values()):
        return None
    metrics = {evaluation: read_json(f)["metrics"] for evaluation, f in files.items()}
    return {name: 100 * _dig(metrics[WHERE[column][0]], WHERE[column][1]) for name, column in SCORES.items()}


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
    write_text(csv_path, pd.DataFrame(rows, columns=["method", "recipe", "seed", *SCORES]).to_csv(index=False))
    return "\n".join(lines)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    print(main(Path("results/fmnist-all-10ep"), Path("results/fmnist-all-round3"), here / "full_size_check.csv"))
