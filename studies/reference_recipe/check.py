"""The plain reference's recipe in this pipeline (studies/reference_recipe/README.md): SimCLR's test-set linear probe
and k-NN over three seeds with the reference's stated settings, against the default preset's
three seeds. Each mean has its 95 % Student-t interval; their difference has Welch's interval,
since two recipes are not paired by seed.

    python -m studies.reference_recipe.check   # after the snakemake command in its README

reads results/reference-recipe (the reference's recipe) and results (the default run, three
seeds), writes studies/reference_recipe/check.csv (one row per recipe and seed) and prints the
markdown table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from scipy import stats

from clusterssl import paths
from clusterssl.io import write_text
from clusterssl.report.stats import t_interval
from studies.recipe_search.full_size_check import SCORES, SEEDS, scores

METHOD = "simclr"
BAR = {"linear": 88.0, "knn20": 85.0}  # issue 12's bars for the default run


def pretrain_minutes(root: Path, seed: int) -> float:
    history = paths.run_files({"paths": {"results": root}, "dataset": "fashion_mnist"}, METHOD, seed)[1]
    return pd.read_csv(history)["seconds"].sum() / 60


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its 95 % Welch interval."""
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return sum(a) / len(a) - sum(b) / len(b), float(ci.low), float(ci.high)


def main(reference: Path, default: Path, csv_path: Path) -> str:
    recipes = {"reference": reference, "default": default}
    runs = {}  # (recipe, seed) -> the run's scores and pretraining minutes
    for name, root in recipes.items():
        for seed in SEEDS:
            if (r := scores(root, METHOD, seed)) is not None:
                runs[name, seed] = {**r, "pretrain_minutes": pretrain_minutes(root, seed)}
    columns = [*SCORES, "pretrain_minutes"]
    rows = [{"recipe": name, "seed": seed, **{k: f"{v:.2f}" for k, v in r.items()}} for (name, seed), r in runs.items()]
    write_text(csv_path, pd.DataFrame(rows, columns=["recipe", "seed", *columns]).to_csv(index=False))
    missing = [f"{name} seed {seed}" for name in recipes for seed in SEEDS if (name, seed) not in runs]
    if missing:
        return "missing runs: " + ", ".join(missing)
    lines = ["| score | reference recipe, seeds 0-2 | mean [95 %] | default preset, seeds 0-2 | mean [95 %] | reference - default [Welch 95 %] | bar |",
             "|---|---|---|---|---|---|---|"]
    for score in columns:
        values = {name: [runs[name, seed][score] for seed in SEEDS] for name in recipes}
        cells = []
        for name in recipes:
            t = t_interval(values[name])
            cells += [", ".join(f"{v:.2f}" for v in values[name]), f"{t['mean']:.2f} [{t['low']:.2f}, {t['high']:.2f}]"]
        d, low, high = welch(values["reference"], values["default"])
        lines.append(f"| {score} | {' | '.join(cells)} | {d:+.2f} [{low:+.2f}, {high:+.2f}] | {BAR.get(score, '–')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    print(main(Path("results/reference-recipe"), Path("results"), here / "reference_check.csv"))
