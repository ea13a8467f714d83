"""`clusterssl report`: tables and figures from saved results only (metrics JSON, training
histories, cached features) — never from checkpoints. Each output is written atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import paths
from ..data import load_meta
from ..io import UserError, read_json, write_text
from .figures import embedding_figure, training_curves_figure
from .stats import paired_difference, t_interval

#: the method the paired differences are taken against (the paper's)
REFERENCE_METHOD = "carl"

# (column, metrics file, path inside "metrics", scale to percent?, header)
COLUMNS = [
    ("linear_top1", "linear", ("top1",), True, "linear top-1 %"),
    ("knn200_top1", "knn", ("k200_top1",), True, "k-NN k=200 %"),
    ("knn20_top1", "knn", ("k20_top1",), True, "k-NN k=20 %"),
    ("kmeans_acc", "cluster", ("kmeans", "acc"), False, "k-means ACC"),
    ("kmeans_nmi", "cluster", ("kmeans", "nmi"), False, "k-means NMI"),
    ("kmeans_ari", "cluster", ("kmeans", "ari"), False, "k-means ARI"),
    # the method's own cluster head (CC, CADC, CoKe's first head, CARL's prototypes), where it has one
    ("head_acc", "cluster", ("head", "acc"), False, "head ACC"),
    ("head_nmi", "cluster", ("head", "nmi"), False, "head NMI"),
    ("head_ari", "cluster", ("head", "ari"), False, "head ARI"),
    ("head_clusters", "cluster", ("head", "clusters_used"), None, "head clusters used"),
]


def columns(params: dict) -> list[tuple]:
    """COLUMNS, then one per semi-supervised fraction and two per transfer dataset (probe, k-NN)."""
    out = list(COLUMNS)
    for f in params["eval"]["semisup"]["fractions"]:
        out.append((f"semisup_{f:g}_top1", paths.semisup_name(f), ("top1",), True, f"semi-sup {100 * f:g} % labels top-1 %"))
    k = min(params["eval"]["knn"]["k"])
    for t in params["eval"]["transfer"]["datasets"]:
        out.append((f"transfer_{t}_linear_top1", paths.transfer_name(t), ("linear", "top1"), True, f"transfer {t} linear %"))
        out.append((f"transfer_{t}_knn{k}_top1", paths.transfer_name(t), ("knn", f"k{k}_top1"), True, f"transfer {t} k-NN k={k} %"))
    return out


DEFAULT_REFERENCE = Path("reference/reported_numbers.csv")


def _dig(d: dict, keys: tuple):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def collect(params: dict) -> pd.DataFrame:
    """One row per (method, seed) with every metric, read from the metrics JSON files."""
    rows = []
    for method in paths.report_rows(params):
        for seed in params["seeds"]:
            row = {"method": method, "seed": seed}
            files = {e: read_json(paths.metrics_file(params, method, seed, e))["metrics"] for e in paths.evaluations(params, method)}
            for col, evaluation, keys, pct, _ in columns(params):
                value = _dig(files[evaluation], keys) if evaluation in files else None
                row[col] = None if value is None else (100 * value if pct else value)
            if method not in (paths.RAW_PIXELS, paths.SCRATCH):
                hist = paths.run_files(params, method, seed)[1]
                if not hist.exists():
                    raise UserError(f"{hist}: training history not found; run `clusterssl pretrain --method {method}` first")
                h = pd.read_csv(hist)
                row["pretrain_minutes"] = h["seconds"].sum() / 60
                row["epochs"] = int(h["epoch"].max())
            rows.append(row)
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds, and the number of seeds, per method."""
    metrics = [c for c in runs.columns if c not in ("method", "seed")]
    g = runs.groupby("method", sort=False)[metrics]
    mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
    out = mean.add_suffix("_mean").join(std.add_suffix("_std"))
    out.insert(0, "seeds", runs.groupby("method", sort=False).size())
    return out.reset_index()


def _fmt(value: float, pct) -> str:
    return ("{:.2f}" if pct else "{:.3f}" if pct is False else "{:.0f}").format(value)


def to_markdown(summary: pd.DataFrame, cols: list[tuple]) -> str:
    """Mean +- standard deviation over seeds (the +- only with more than one seed); n = seeds."""
    header = ["method", "n", *(c[4] for c in cols), "pretrain min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in summary.iterrows():
        cells = [r["method"], str(int(r["seeds"]))]
        for col, _, _, pct, _ in cols:
            m, s = r[f"{col}_mean"], r[f"{col}_std"]
            cells.append("–" if pd.isna(m) else _fmt(m, pct) + (f" ± {_fmt(s, pct)}" if r["seeds"] > 1 else ""))
        pm = r.get("pretrain_minutes_mean")
        cells.append("–" if pm is None or pd.isna(pm) else f"{pm:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def intervals(runs: pd.DataFrame, cols: list[tuple], confidence: float = 0.95) -> pd.DataFrame:
    """Per method and metric: n, mean, std and the Student-t interval of the mean over seeds."""
    out = []
    for method, g in runs.groupby("method", sort=False):
        for col, *_ in cols:
            if g[col].notna().any():
                out.append({"method": method, "metric": col, **t_interval(g[col].astype(float), confidence)})
    return pd.DataFrame(out)


def paired_differences(runs: pd.DataFrame, cols: list[tuple], reference: str, confidence: float = 0.95) -> pd.DataFrame:
    """`reference` minus every other row, seed by seed (same seeds, splits and evaluation seeds)."""
    out = []
    ref = runs[runs["method"] == reference].set_index("seed")
    for method, g in runs[runs["method"] != reference].groupby("method", sort=False):
        g = g.set_index("seed").loc[ref.index]
        for col, *_ in cols:
            if ref[col].notna().any() and g[col].notna().any():
                d = paired_difference(ref[col].astype(float).values, g[col].astype(float).values, confidence)
                out.append({"method": reference, "versus": method, "metric": col, **d})
    return pd.DataFrame(out)


def intervals_markdown(iv: pd.DataFrame, paired: pd.DataFrame, cols: list[tuple], reference: str) -> str:
    pct = {c[0]: c[3] for c in cols}
    header = {c[0]: c[4] for c in cols}
    lines = ["### 95 % intervals of the mean over seeds (Student t, n - 1 degrees of freedom)", ""]
    if iv.empty or iv["n"].max() < 2:
        lines.append("_One seed: no interval is claimed. Run with several seeds (`seeds: [0, 1, 2]`)._")
    else:
        lines += ["| method | metric | n | mean | 95 % interval |", "|---|---|---|---|---|"]
        for _, r in iv.iterrows():
            ci = "–" if pd.isna(r["low"]) else f"[{_fmt(r['low'], pct[r['metric']])}, {_fmt(r['high'], pct[r['metric']])}]"
            lines.append(f"| {r['method']} | {header[r['metric']]} | {r['n']} | {_fmt(r['mean'], pct[r['metric']])} | {ci} |")
    lines += ["", f"### Paired differences over seeds: {reference} minus each other row", ""]
    if paired.empty:
        lines.append(f"_{reference} is not in this run, or no other row shares a metric with it._")
    elif paired["n"].max() < 2:
        lines.append("_One seed: no paired interval is claimed._")
    else:
        lines += ["| versus | metric | n | mean difference | 95 % interval | p (paired t) | excludes 0 |", "|---|---|---|---|---|---|---|"]
        for _, r in paired.iterrows():
            p = pct[r["metric"]]
            ci = "–" if pd.isna(r["low"]) else f"[{_fmt(r['low'], p)}, {_fmt(r['high'], p)}]"
            pv = "–" if pd.isna(r["p_value"]) else f"{r['p_value']:.3f}"
            lines.append(f"| {r['versus']} | {header[r['metric']]} | {r['n']} | {_fmt(r['mean'], p)} | {ci} | {pv} | {'yes' if r['excludes_zero'] else 'no'} |")
    return "\n".join(lines) + "\n"


def reference_table(reference: Path | None, dataset: str) -> str:
    if reference is None or not reference.exists():
        return "_No published-numbers file found._\n"
    ref = pd.read_csv(reference)
    ref = ref[ref["dataset"].isin([dataset, "*"])]
    if ref.empty:
        return f"_No published numbers for {dataset} in {reference}._\n"
    lines = ["| method | backbone | protocol | metric | value | source |", "|---|---|---|---|---|---|"]
    for _, r in ref.iterrows():
        v = "" if pd.isna(r["value"]) else r["value"]
        lines.append(f"| {r['method']} | {r['backbone']} | {r['protocol']} | {r['metric']} | {v} | {r['source']} ({r['status']}) |")
    return "\n".join(lines) + "\n"


def build_report(params: dict, reference: Path | None = None) -> Path:
    from ..methods.base import get_method
    from ..train import recipe

    reference = reference or DEFAULT_REFERENCE
    out = paths.report_dir(params)
    runs = collect(params)
    cols = columns(params)
    summary = summarise(runs)
    tables = out / "tables"
    write_text(tables / "runs.csv", runs.to_csv(index=False))
    write_text(tables / "main.csv", summary.to_csv(index=False))
    main_md = to_markdown(summary, cols)
    write_text(tables / "main.md", main_md)
    iv, paired = intervals(runs, cols), paired_differences(runs, cols, REFERENCE_METHOD)
    write_text(tables / "intervals.csv", iv.to_csv(index=False))
    write_text(tables / "paired.csv", paired.to_csv(index=False))
    intervals_md = intervals_markdown(iv, paired, cols, REFERENCE_METHOD)
    write_text(tables / "intervals.md", intervals_md)

    histories = {m: [pd.read_csv(paths.run_files(params, m, s)[1]) for s in params["seeds"]] for m in paths.methods(params)}
    training_curves_figure(histories, out / "figures" / "training_curves.png")
    feats = {}
    for m in paths.evaluated_methods(params):
        f = paths.features_file(params, m, params["seeds"][0])
        with np.load(f) as z:
            feats[m] = (z["test_features"], z["test_labels"])
    classes = load_meta(paths.prepared_dir(params, params["dataset"]))["classes"]
    embedding_figure(feats, out / "figures" / "embeddings.png", params["report"]["embedding"], params["report"]["embedding_samples"], seed=params["seeds"][0], classes=classes)

    notes = "\n".join(f"- **{m}**: {get_method(m).provenance}." for m in paths.methods(params))
    seed0 = params["seeds"][0]
    runs_cfg = {m: read_json(paths.run_files(params, m, seed0)[2]) for m in paths.methods(params)}
    backbone = runs_cfg[paths.methods(params)[0]]["backbone"]
    setup = (
        f"Backbone `{backbone['name']}` layers {backbone['layers']}, channels {backbone['channels']}, stem "
        f"`{backbone['stem']}`, trained from scratch by every method for the same number of epochs.\n\n"
        "| method | epochs | batch | optimizer | lr (per 256) | weight decay | crop scale | its recipe (keys it sets) | images | device, threads |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(
            f"| {m} | {c['pretrain']['epochs']} | {c['pretrain']['batch_size']} | {c['pretrain']['optimizer']} | {c['pretrain']['lr']} | "
            f"{c['pretrain']['weight_decay']} | {c['augment']['crop_scale']} | "
            f"{', '.join(f'{k}: {v}' for k, v in recipe(params, m).items()) or 'shared'} | {c['train_images']} | {c['device']}, {c['threads']} |"
            for m, c in runs_cfg.items()
        )
        + "\n\nMethod params: " + "; ".join(f"**{m}** {c['method_params']}" for m, c in runs_cfg.items())
    )
    protocols = {e: read_json(paths.metrics_file(params, paths.RAW_PIXELS, seed0, e)) for e in paths.EVALS}
    semisup_text = ", ".join(f"{100 * f:g} % labels" for f in params["eval"]["semisup"]["fractions"])
    transfer_text = ", ".join(f"{params['dataset']} -> {t}" for t in params["eval"]["transfer"]["datasets"]) or "none"
    index = f"""# clusterssl report — {params['dataset']}

Frozen-encoder evaluations on the {params['dataset']} test set ({protocols['linear']['num_test']} images);
`raw_pixels` runs the same protocols on flattened pixels (no learning). Seeds: {params['seeds']}.
- Linear probe: one linear layer on standardised features, fitted on {protocols['linear']['num_train']} train
  features, settings {protocols['linear']['settings']}; each encoder's learning rate is chosen
  from that list on a held-out part of the train features (never on test), then refitted on all.
- k-NN: weighted vote (cosine similarity, weights exp(s / T)), settings {protocols['knn']['settings']}.
- k-means: K = number of classes on L2-normalised test features; ACC via Hungarian matching;
  settings {protocols['cluster']['settings']}.
- head: the method's own clusters (argmax of its cluster head) on the test images, where it has
  one: CC, CADC and CoKe's first head have one cluster per class; CARL's head is its K prototypes,
  so its ACC counts only the best-matched 10 prototypes and its NMI is not comparable with K = 10.
  "clusters used" is how many distinct clusters the test images fall into.
- Semi-supervised ({semisup_text}): the backbone plus a new linear head fine-tuned on
  class-balanced labelled subsets of the train split (the same index files for every row, one per
  seed), settings {params['eval']['semisup']}; the learning rate is chosen per encoder on a held-out
  part of the labelled subset. `scratch` is the same backbone from random initialisation;
  `raw_pixels` is the linear probe on the subset's pixels.
- Transfer ({transfer_text}): the frozen encoder's linear probe and k-NN (settings as above) on
  another dataset's train/test splits, its images resized to the pretraining images' shape.
- n is the number of seeds per cell; with more than one, cells show mean ± standard deviation.

Pretraining runs:
{setup}

## Main table

{main_md}
## Seeds: intervals and paired differences

{intervals_md}
## Figures

![training curves](figures/training_curves.png)

![embeddings](figures/embeddings.png)

## What each method follows, and what is assumed

{notes}

## Published numbers (for context; other datasets, backbones and budgets)

{reference_table(reference, params['dataset'])}
"""
    write_text(out / "index.md", index)
    return out
