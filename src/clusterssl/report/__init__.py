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

# (column, protocol file, path inside "metrics", scale to percent?)
COLUMNS = [
    ("linear_top1", "linear", ("top1",), True),
    ("knn200_top1", "knn", ("k200_top1",), True),
    ("knn20_top1", "knn", ("k20_top1",), True),
    ("kmeans_acc", "cluster", ("kmeans", "acc"), False),
    ("kmeans_nmi", "cluster", ("kmeans", "nmi"), False),
    ("kmeans_ari", "cluster", ("kmeans", "ari"), False),
    # the method's own cluster head (CC, CADC, CoKe's first head, CARL's prototypes), where it has one
    ("head_acc", "cluster", ("head", "acc"), False),
    ("head_nmi", "cluster", ("head", "nmi"), False),
    ("head_ari", "cluster", ("head", "ari"), False),
    ("head_clusters", "cluster", ("head", "clusters_used"), None),
]
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
    for method in paths.evaluated_methods(params):
        for seed in params["seeds"]:
            row = {"method": method, "seed": seed}
            for col, protocol, keys, pct in COLUMNS:
                value = _dig(read_json(paths.metrics_file(params, method, seed, protocol))["metrics"], keys)
                row[col] = None if value is None else (100 * value if pct else value)
            if method != paths.RAW_PIXELS:
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


def to_markdown(summary: pd.DataFrame) -> str:
    header = ["method", "seeds", "linear top-1 %", "k-NN k=200 %", "k-NN k=20 %", "k-means ACC", "k-means NMI", "k-means ARI",
              "head ACC", "head NMI", "head ARI", "head clusters used", "pretrain min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in summary.iterrows():
        cells = [r["method"], str(int(r["seeds"]))]
        for col, _, _, pct in COLUMNS:
            m, s = r[f"{col}_mean"], r[f"{col}_std"]
            if pd.isna(m):
                cells.append("–")
                continue
            fmt = "{:.2f}" if pct else "{:.3f}" if pct is False else "{:.0f}"
            cells.append(fmt.format(m) + (f" ± {fmt.format(s)}" if r["seeds"] > 1 else ""))
        pm = r.get("pretrain_minutes_mean")
        cells.append("–" if pm is None or pd.isna(pm) else f"{pm:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
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

    reference = reference or DEFAULT_REFERENCE
    out = paths.report_dir(params)
    runs = collect(params)
    summary = summarise(runs)
    tables = out / "tables"
    write_text(tables / "runs.csv", runs.to_csv(index=False))
    write_text(tables / "main.csv", summary.to_csv(index=False))
    main_md = to_markdown(summary)
    write_text(tables / "main.md", main_md)

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
    setup = "\n".join(
        f"- **{m}**: `{c['backbone']['name']}` layers {c['backbone']['layers']}, channels {c['backbone']['channels']}, "
        f"stem `{c['backbone']['stem']}`; {c['pretrain']['epochs']} epochs, batch {c['pretrain']['batch_size']}, "
        f"{c['pretrain']['optimizer']} lr {c['pretrain']['lr']}; {c['train_images']} training images; device {c['device']}, "
        f"{c['threads']} threads; method params {c['method_params']}"
        for m, c in runs_cfg.items()
    )
    protocols = {e: read_json(paths.metrics_file(params, paths.RAW_PIXELS, seed0, e)) for e in paths.EVALS}
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

Pretraining runs:
{setup}

## Main table

{main_md}
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
