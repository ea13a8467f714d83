"""The report's tables beyond the main one: each written as CSV, Markdown and LaTeX from one
DataFrame, the reproduction scorecard, and the methods table."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..io import write_text

#: the names reported_numbers.csv uses for the methods implemented here
METHOD_NAMES = {"CARL": "carl", "CoKe": "coke", "CueCo": "cueco", "CC": "cc", "CADC": "cadc", "SimCLR": "simclr",
                "SwAV": "swav", "BYOL": "byol", "MoCoV2+": "moco_v2", "kmeans-raw-pixels": "raw_pixels"}
DATASET_NAMES = {"fashion_mnist": "Fashion-MNIST", "digits": "digits (8x8)", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                 "cifar100_20": "CIFAR-100 (20 superclasses)", "stl10": "STL-10", "imagenet": "ImageNet-1k", "imagenet100": "ImageNet-100"}
FULL_RESNET = {"resnet18": ([2, 2, 2, 2], [64, 128, 256, 512]), "resnet34": ([3, 4, 6, 3], [64, 128, 256, 512])}
CARL_MISSING = "published value not available (CARL's tables are in no source reachable here; never filled from memory)"


def write_all(df: pd.DataFrame, stem: Path, markdown: str | None = None, caption: str = "") -> str:
    """`stem`.csv, .md (the given Markdown, or the frame's) and .tex; returns the Markdown."""
    write_text(stem.with_suffix(".csv"), df.to_csv(index=False))
    md = markdown if markdown is not None else to_markdown(df)
    write_text(stem.with_suffix(".md"), md)
    write_text(stem.with_suffix(".tex"), to_latex(df, caption, f"tab:{stem.name}"))
    return md


def _missing(v) -> bool:
    return v is None or (not isinstance(v, (str, list, tuple)) and bool(pd.isna(v)))


def to_markdown(df: pd.DataFrame) -> str:
    cell = lambda v: "–" if _missing(v) else str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--"}


def latex_escape(text) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); every cell escaped."""
    cell = lambda v: "--" if _missing(v) else latex_escape(v)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{" + "l" * len(df.columns) + "}", r"\toprule",
             " & ".join(latex_escape(c) for c in df.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_escape(caption)}}}", rf"\label{{{label}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# --- reproduction scorecard -------------------------------------------------------------------
def backbone_name(backbone: dict) -> str:
    """The backbone as reported_numbers.csv names them: `resnet18` only at its full depth and width."""
    name = backbone["name"]
    full = FULL_RESNET.get(name)
    if full and backbone.get("layers") in (None, full[0]) and backbone.get("channels") in (None, full[1]):
        return name
    return f"{name} (layers {backbone.get('layers')}, channels {backbone.get('channels')})"


def measured_column(method: str, protocol: str, metric: str, head_methods: set[str]) -> str | None:
    """The main table's column a published (protocol, metric) corresponds to, if any. Clustering
    papers score their own cluster head; raw pixels have only k-means."""
    if protocol in ("linear", "linear-online") and metric == "top1":
        return "linear_top1"
    if protocol == "clustering" and metric in ("acc", "nmi", "ari"):
        return f"head_{metric}" if method in head_methods else f"kmeans_{metric}"
    return None


def scorecard(reference: pd.DataFrame, summary: pd.DataFrame, dataset: str, backbone: dict, epochs: int) -> pd.DataFrame:
    """Every row of reported_numbers.csv, in its order, beside the measured value where method,
    dataset, backbone, protocol and budget all match; otherwise the reasons it is not comparable."""
    ours = summary.set_index("method")
    head_methods = {m for m in ours.index if "head_acc_mean" in ours and pd.notna(ours.loc[m, "head_acc_mean"])}
    here_backbone = backbone_name(backbone)
    rows = []
    for _, r in reference.iterrows():
        method = METHOD_NAMES.get(r["method"])
        row = {"method": r["method"], "dataset": r["dataset"], "backbone": r["backbone"], "protocol": r["protocol"], "metric": r["metric"],
               "published": None if pd.isna(r["value"]) else r["value"], "source": f"{r['source']} ({r['status']})",
               "measured": None, "n": None, "difference": None}
        reasons = []
        if r["method"] == "CARL":
            row.update(verdict="published value not available", reason=CARL_MISSING)
            rows.append(row)
            continue
        if method is None:
            reasons.append(f"{r['method']} is not implemented here")
        if r["dataset"] != dataset:
            reasons.append(f"{DATASET_NAMES.get(r['dataset'], r['dataset'])} vs {DATASET_NAMES.get(dataset, dataset)}")
        raw = method == "raw_pixels"
        expected = "none" if raw else here_backbone
        if r["backbone"] != expected:
            reasons.append(f"backbone {r['backbone']} vs {expected}")
        budget = re.search(r"\((\d+) ep\)", str(r["source"]))
        if budget and not raw and int(budget.group(1)) != epochs:
            reasons.append(f"{budget.group(1)} epochs vs {epochs}")
        if r["protocol"] == "linear-online":
            reasons.append("online linear head trained during pretraining vs a probe fitted after it")
        column = measured_column(method, r["protocol"], r["metric"], head_methods) if method else None
        if method and column is None:
            reasons.append(f"protocol {r['protocol']} ({r['metric']}) is not run here")
        if not reasons and method not in ours.index:
            reasons.append(f"{method} is not in this run's methods")
        if reasons:
            row.update(verdict="not comparable", reason="; ".join(reasons))
        else:
            value, n = ours.loc[method, f"{column}_mean"], int(ours.loc[method, "seeds"])
            row.update(measured=round(float(value), 3), n=n, difference=round(float(value) - float(r["value"]), 3), verdict="compared",
                       reason=f"measured: {column}" + (" (k-means on this run's test split; the source's image set is not recorded)" if raw else ""))
        rows.append(row)
    out = pd.DataFrame(rows, columns=["method", "dataset", "backbone", "protocol", "metric", "published", "source",
                                      "measured", "n", "difference", "verdict", "reason"])
    return out.astype({"n": "Int64"})


# --- methods table ------------------------------------------------------------------------------
def methods_table(runs_cfg: dict, recipes: dict, provenance: dict) -> pd.DataFrame:
    """Per method: the recipe it trained with (from its run's config.json), the keys its own
    recipe sets, its method params, and what follows the authors and what is assumed."""
    rows = []
    for m, c in runs_cfg.items():
        t = c["pretrain"]
        rows.append({"method": m, "epochs": t["epochs"], "batch": t["batch_size"], "optimizer": t["optimizer"], "lr (per 256)": t["lr"],
                     "weight decay": t["weight_decay"], "crop scale": c["augment"]["crop_scale"],
                     "its recipe": ", ".join(f"{k}: {v}" for k, v in recipes[m].items()) or "shared",
                     "method params": ", ".join(f"{k}: {v}" for k, v in c["method_params"].items()),
                     "follows / assumes": provenance[m]})
    return pd.DataFrame(rows)
