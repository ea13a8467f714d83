"""`clusterssl report`: tables and figures from saved results only (metrics JSON, training
histories, cached features) — never from checkpoints. Each output is written atomically."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import yaml

from .. import paths, registry
from ..io import UserError, atomic_dir, read_json, remove_stale_temporaries, write_json, write_text
from . import tables
from .figures import FIGURES, ReportInputs
from .stats import paired_difference, t_interval

#: the method the paired differences are taken against (the paper's)
REFERENCE_METHOD = "carl"

def frozen_columns() -> list[tuple]:
    """(column, metrics file, path inside "metrics", scale to percent?, header) of each frozen-feature
    protocol, as its `@protocol` declares them (clusterssl/registry.py)."""
    return [(column, name, tuple(keys), pct, header)
            for name, spec in registry.protocols().items() for column, keys, pct, header in spec.columns]


def semisup_column(fraction: float) -> str:
    """The runs table's column of fine-tuning with `fraction` of the labels."""
    return f"semisup_{fraction:g}_top1"


def columns(params: dict) -> list[tuple]:
    """The protocols' columns, then one per semi-supervised fraction and two per transfer dataset (probe, k-NN)."""
    out = frozen_columns()
    for f in params["eval"]["semisup"]["fractions"]:
        out.append((semisup_column(f), paths.semisup_name(f), ("top1",), True, f"semi-sup {100 * f:g} % labels top-1 %"))
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


#: what a metrics file records of where its numbers came from (older files have none of it)
METRICS_PROVENANCE = ("method", "seed", "pretrained_on", "evaluation", "checkpoint_sha256")


def eval_command(evaluation: str, method: str, seed: int) -> str:
    """The `clusterssl eval` command that writes the metrics file `evaluation` (paths.metrics_file)."""
    if evaluation.startswith(paths.transfer_name("")):
        return f"clusterssl eval transfer --target {evaluation.removeprefix(paths.transfer_name(''))} --method {method} --seed {seed}"
    if evaluation.startswith(paths.semisup_name("")):
        return f"clusterssl eval semisup --fraction {evaluation.removeprefix(paths.semisup_name(''))} --method {method} --seed {seed}"
    return f"clusterssl eval {evaluation} --method {method} --seed {seed}"


def read_metrics(params: dict, method: str, seed: int, evaluation: str) -> dict:
    """The "metrics" of a metrics file, refused unless the file says it holds what its folder and
    name say: that evaluation of that method and seed, pretrained on this dataset."""
    f = paths.metrics_file(params, method, seed, evaluation)
    record, fix = read_json(f), f"re-run `{eval_command(evaluation, method, seed)}`"
    missing = [k for k in METRICS_PROVENANCE if k not in record]
    if missing:
        raise UserError(f"{f}: records no {', '.join(missing)} (written by an older clusterssl); {fix}")
    held = {k: record[k] for k in ("method", "seed", "pretrained_on", "evaluation")}
    if held != {"method": method, "seed": seed, "pretrained_on": params["dataset"], "evaluation": evaluation}:
        raise UserError(f"{f}: holds {held['evaluation']} metrics of {held['method']} seed {held['seed']} pretrained on "
                        f"{held['pretrained_on']}, not {evaluation} metrics of {method} seed {seed} pretrained on {params['dataset']}; {fix}")
    return record["metrics"]


def collect(params: dict, methods: list[str] | None = None, evaluations: set[str] | None = None) -> pd.DataFrame:
    """One row per (method, seed) with every metric, read from the metrics JSON files, for
    `methods` (default: every row of the report) and `evaluations` (default: all; the columns of
    others are left empty)."""
    rows = []
    for method in paths.report_rows(params) if methods is None else methods:
        for seed in params["seeds"]:
            row = {"method": method, "seed": seed}
            files = {e: read_metrics(params, method, seed, e) for e in paths.evaluations(params, method)
                     if evaluations is None or e in evaluations}
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


def main_cells(summary: pd.DataFrame, cols: list[tuple]) -> pd.DataFrame:
    """The main table as printed: mean ± standard deviation over seeds (the ± only with more
    than one seed); n = seeds."""
    rows = []
    for _, r in summary.iterrows():
        row = {"method": r["method"], "n": str(int(r["seeds"]))}
        for col, _, _, pct, header in cols:
            m, s = r[f"{col}_mean"], r[f"{col}_std"]
            row[header] = "–" if pd.isna(m) else _fmt(m, pct) + (f" ± {_fmt(s, pct)}" if r["seeds"] > 1 else "")
        pm = r.get("pretrain_minutes_mean")
        row["pretrain min"] = "–" if pm is None or pd.isna(pm) else f"{pm:.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


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


def interval_cells(iv: pd.DataFrame, paired: pd.DataFrame, cols: list[tuple]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two seed tables as printed (empty frames where fewer than two seeds allow no interval)."""
    pct = {c[0]: c[3] for c in cols}
    header = {c[0]: c[4] for c in cols}
    ci = lambda r, p: "–" if pd.isna(r["low"]) else f"[{_fmt(r['low'], p)}, {_fmt(r['high'], p)}]"
    one = pd.DataFrame(columns=["method", "metric", "n", "mean", "95 % interval"])
    if not iv.empty and iv["n"].max() >= 2:
        one = pd.DataFrame([{"method": r["method"], "metric": header[r["metric"]], "n": r["n"], "mean": _fmt(r["mean"], pct[r["metric"]]),
                             "95 % interval": ci(r, pct[r["metric"]])} for _, r in iv.iterrows()])
    two = pd.DataFrame(columns=["versus", "metric", "n", "mean difference", "95 % interval", "p (paired t)", "excludes 0"])
    if not paired.empty and paired["n"].max() >= 2:
        two = pd.DataFrame([{"versus": r["versus"], "metric": header[r["metric"]], "n": r["n"], "mean difference": _fmt(r["mean"], pct[r["metric"]]),
                             "95 % interval": ci(r, pct[r["metric"]]), "p (paired t)": "–" if pd.isna(r["p_value"]) else f"{r['p_value']:.3f}",
                             "excludes 0": "yes" if r["excludes_zero"] else "no"} for _, r in paired.iterrows()])
    return one, two


def intervals_markdown(iv: pd.DataFrame, paired: pd.DataFrame, cols: list[tuple], reference: str) -> str:
    one, two = interval_cells(iv, paired, cols)
    lines = ["### 95 % intervals of the mean over seeds (Student t, n - 1 degrees of freedom)", ""]
    lines.append(tables.to_markdown(one) if len(one) else "_One seed: no interval is claimed. Run with several seeds (`seeds: [0, 1, 2]`)._")
    lines += ["", f"### Paired differences over seeds: {reference} minus each other row", ""]
    if paired.empty:
        lines.append(f"_{reference} is not in this run, or no other row shares a metric with it._")
    else:
        lines.append(tables.to_markdown(two) if len(two) else "_One seed: no paired interval is claimed._")
    return "\n".join(lines) + "\n"


def label_efficiency(runs: pd.DataFrame, params: dict) -> pd.DataFrame:
    """Test top-1 per method and share of labels: fine-tuned at each semi-supervised fraction,
    the frozen linear probe at 100 %; mean and 95 % t interval over seeds."""
    rows = []
    points = [(100 * f, "fine-tune", semisup_column(f)) for f in params["eval"]["semisup"]["fractions"]]
    for method, g in runs.groupby("method", sort=False):
        for percent, protocol, col in [*points, (100.0, "frozen linear probe", "linear_top1")]:
            if col in g and g[col].notna().any():
                rows.append({"method": method, "labels_percent": percent, "protocol": protocol, **t_interval(g[col].astype(float))})
    return pd.DataFrame(rows)


def dvc_metrics(summary: pd.DataFrame, cols: list[tuple]) -> dict:
    """{method: {metric: mean over seeds}} for `dvc metrics show / diff` and `dvc exp show`."""
    out = {}
    for _, r in summary.iterrows():
        out[r["method"]] = {c[0]: round(float(r[f"{c[0]}_mean"]), 4) for c in cols if pd.notna(r[f"{c[0]}_mean"])}
    return out


def machine() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # the instruction set PyTorch's CPU kernels use: results are bit for bit only within one (README)
    isa = torch.backends.cpu.get_cpu_capability()
    from ..runtime import cpu_has_bf16_units  # what `pretrain.amp: auto` computes in on this CPU

    bf16 = "with" if cpu_has_bf16_units() else "without"
    gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none"
    return (f"{cpu}, {os.cpu_count()} logical CPUs, PyTorch CPU kernels {isa}, {bf16} bf16 units; GPU: {gpu}; "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("clusterssl", "torch", "torchvision", "timm", "numpy", "scikit-learn", "pandas", "snakemake", "dvc"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} not installed")
    return ", ".join(out)


def wall_times(params: dict) -> pd.DataFrame:
    """Per stage (rule), the jobs' count, total and longest wall time from Snakemake's benchmark files."""
    rows = []
    root = paths.results_dir(params) / "benchmarks"
    for f in sorted(root.rglob("*.tsv")):
        parts = f.relative_to(root).parts
        stage = "/".join(parts[:2] if parts[0] == "eval" else parts[:1]).removesuffix(".tsv")
        rows.append({"stage": stage, "job": str(f.relative_to(root).with_suffix("")), "s": float(pd.read_csv(f, sep="\t")["s"].iloc[-1])})
    if not rows:
        return pd.DataFrame(columns=["stage", "jobs", "total s", "longest s"])
    df = pd.DataFrame(rows).groupby("stage", sort=False)["s"]
    return pd.DataFrame({"jobs": df.size(), "total s": df.sum().round(1), "longest s": df.max().round(1)}).reset_index()


def run_configs(params: dict) -> dict[str, dict]:
    """Each pretrained method's config.json of the first seed: the recipe it trained with, the keys
    its own recipe set and its provenance line, as pretraining recorded them."""
    seed0, out = params["seeds"][0], {}
    for m in paths.methods(params):
        f = paths.run_files(params, m, seed0)[2]
        out[m] = read_json(f)
        missing = [k for k in ("recipe", "provenance") if k not in out[m]]
        if missing:
            raise UserError(f"{f}: has no {' or '.join(missing)} (written by an older clusterssl); "
                            f"run `clusterssl pretrain --method {m} --seed {seed0}` again")
    return out


def modes_by_method(runs_cfg: dict, mode_of) -> str:
    """Which methods' runs share a mode (`mode_of(config.json)`): "MODE, every method" when all
    do, else "MODE: methods; MODE: methods"."""
    modes: dict[str, list[str]] = {}
    for m, c in runs_cfg.items():
        modes.setdefault(mode_of(c), []).append(m)
    return "; ".join(f"{mode}: {', '.join(ms)}" for mode, ms in modes.items()) if len(modes) > 1 else f"{next(iter(modes))}, every method"


def kernels_text(runs_cfg: dict) -> str:
    """The run record's line on which kernels pretraining ran, from each run's config.json
    (`pretrain.deterministic`; a run made before the key existed ran deterministic ones)."""
    text = modes_by_method(runs_cfg, lambda c: "deterministic" if c.get("pretrain", {}).get("deterministic", True) else "autotuned")
    if {str(c.get("device", "")).split(":")[0] for c in runs_cfg.values()} == {"cpu"}:
        text += " (these runs trained on the CPU, whose kernels are deterministic either way)"
    return (f"{text}. Deterministic: no cuDNN autotuning, CUDA runs repeat bit for bit; autotuned "
            "(`pretrain.deterministic: false`): faster on a GPU, repeatable to rounding only")


def precision_text(runs_cfg: dict) -> str:
    """The run record's line on the precision pretraining computed in, from each run's
    config.json (`pretrain.amp` as resolved on its machine; a run made before the key was
    recorded says so)."""
    text = modes_by_method(runs_cfg, lambda c: {"bf16": "bf16 autocast", "fp32": "fp32"}.get(c.get("autocast"), "not recorded"))
    return (f"{text}. `pretrain.amp: auto` computes in bf16 on CUDA and on CPUs with bf16 units (AVX512_BF16, AMX), "
            "in fp32 elsewhere, so the same params can give other numbers on another CPU type")


def write_tables(params: dict, runs: pd.DataFrame, summary: pd.DataFrame, runs_cfg: dict, reference: Path, out: Path) -> dict:
    """The tables: CSV (numbers), Markdown and LaTeX (as printed), and metrics.json; returns
    what index.md shows of them."""
    t, cols = out / "tables", columns(params)
    first = runs_cfg[paths.methods(params)[0]]
    write_text(t / "runs.csv", runs.to_csv(index=False))
    walltime = wall_times(params)
    write_text(t / "walltime.csv", walltime.to_csv(index=False))  # `clusterssl readme --table walltime` renders it
    write_text(t / "main.csv", summary.to_csv(index=False))
    cells = main_cells(summary, cols)
    main_md = tables.to_markdown(cells)
    write_text(t / "main.md", main_md)
    write_text(t / "main.tex", tables.to_latex(cells, f"{params['dataset']}: mean ± std over n seeds", "tab:main"))
    iv, paired = intervals(runs, cols), paired_differences(runs, cols, REFERENCE_METHOD)
    write_text(t / "intervals.csv", iv.to_csv(index=False))
    write_text(t / "paired.csv", paired.to_csv(index=False))
    intervals_md = intervals_markdown(iv, paired, cols, REFERENCE_METHOD)
    write_text(t / "intervals.md", intervals_md)
    one, two = interval_cells(iv, paired, cols)
    write_text(t / "intervals.tex", tables.to_latex(one, "95 % t intervals of the mean over seeds", "tab:intervals")
               + tables.to_latex(two, f"Paired differences over seeds: {REFERENCE_METHOD} minus each row", "tab:paired"))
    score = tables.scorecard(pd.read_csv(reference), summary, params["dataset"], first["backbone"], first["pretrain"]["epochs"])
    scorecard_md = tables.write_all(score, t / "scorecard", caption="Reproduction scorecard: published numbers beside the measured ones")
    recipes, provenance = ({m: c[key] for m, c in runs_cfg.items()} for key in ("recipe", "provenance"))
    methods_md = tables.write_all(tables.methods_table(runs_cfg, recipes, provenance), t / "methods",
                                  caption="Each method's pretraining recipe and assumptions")
    efficiency = label_efficiency(runs, params)
    write_text(t / "label_efficiency.csv", efficiency.to_csv(index=False))
    write_json(out / "metrics.json", dvc_metrics(summary, cols))
    counts = ", ".join(f"{n} {v}" for v, n in score["verdict"].value_counts().items())
    return {"main_md": main_md, "intervals_md": intervals_md, "scorecard_md": scorecard_md, "methods_md": methods_md,
            "counts": counts, "efficiency": efficiency, "kernels": kernels_text(runs_cfg), "precision": precision_text(runs_cfg),
            "walltime": walltime}


def write_figures(params: dict, efficiency: pd.DataFrame, out: Path) -> None:
    """Every figure declared in figures.py (`@figure`), in its order, as figures/<name>.png."""
    inputs = ReportInputs(params, efficiency)
    for fig in FIGURES.values():
        fig.draw(inputs, out / "figures" / fig.file)


def figures_markdown() -> str:
    """index.md's figures: each declared figure's title, its reading and the image."""
    return "\n".join(f"**{f.title}** — {f.reading}\n\n![{f.title}](figures/{f.file})\n" for f in FIGURES.values())


def build_report(params: dict, reference: Path | None = None) -> Path:
    reference = reference or DEFAULT_REFERENCE
    out = paths.report_dir(params)
    runs = collect(params)
    summary = summarise(runs)
    runs_cfg = run_configs(params)
    first = runs_cfg[paths.methods(params)[0]]
    # built beside and swapped in whole: a kill or a full disk leaves the previous report (or
    # none), never new tables beside old figures; what a killed build left beside goes first
    remove_stale_temporaries(out.parent, f".{out.name}.*.tmp")
    with atomic_dir(out) as building:
        parts = write_tables(params, runs, summary, runs_cfg, reference, building)
        write_figures(params, parts.pop("efficiency"), building)
        write_text(building / "index.md", index_markdown(params, reference, out, first["backbone"], first["pretrain"]["epochs"], **parts))
    return out


def index_markdown(params: dict, reference: Path, out: Path, backbone: dict, epochs: int, main_md: str, intervals_md: str,
                   scorecard_md: str, methods_md: str, counts: str, kernels: str, precision: str,
                   walltime: pd.DataFrame) -> str:
    """results/report/index.md: how each number was measured, the tables, the figures and the run record."""
    seed0 = params["seeds"][0]
    figures_md = figures_markdown()
    files_md = "\n".join(f"- [{p.relative_to(out)}]({p.relative_to(out)})" for p in paths.report_files(params) if p.parent != out)
    walltime_md = tables.to_markdown(walltime) if len(walltime) else "_no benchmark files: this run was not made by Snakemake._\n"
    machine_text, versions_text = machine(), versions()
    protocols = {e: read_json(paths.metrics_file(params, paths.RAW_PIXELS, seed0, e)) for e in paths.evals()}
    cluster_split = {"test": "test", "train": "train", "train+test": "train and test"}[params["eval"]["cluster"]["split"]]
    semisup_text = ", ".join(f"{100 * f:g} % labels" for f in params["eval"]["semisup"]["fractions"])
    transfer_text = ", ".join(f"{params['dataset']} -> {t}" for t in params["eval"]["transfer"]["datasets"]) or "none"
    return f"""# clusterssl report — {params['dataset']}

Frozen-encoder evaluations on the {params['dataset']} test set ({protocols['linear']['num_test']} images);
`raw_pixels` runs the same protocols on flattened pixels (no learning). Seeds: {params['seeds']}.
- Linear probe: one linear layer on standardised features, fitted on {protocols['linear']['num_train']} train
  features, settings {protocols['linear']['settings']}; each encoder's learning rate is chosen
  from that list on a held-out part of the train features (never on test), then refitted on all.
- k-NN: weighted vote (cosine similarity, weights exp(s / T)), settings {protocols['knn']['settings']}.
- k-means: K = number of classes on the L2-normalised features of the {cluster_split} images; ACC via
  Hungarian matching; settings {protocols['cluster']['settings']}.
- head: the method's own clusters (argmax of its cluster head) on the same images, where it has
  one: CC, CADC and CoKe's first head have one cluster per class; CARL's head is its K prototypes,
  so its ACC counts only the best-matched 10 prototypes and its NMI is not comparable with K = 10.
  "clusters used" is how many distinct clusters those images fall into.
- Semi-supervised ({semisup_text}): the backbone plus a new linear head fine-tuned on
  class-balanced labelled subsets of the train split (the same index files for every row, one per
  seed), settings {params['eval']['semisup']}; the learning rate is chosen per encoder on a held-out
  part of the labelled subset. `scratch` is the same backbone from random initialisation;
  `raw_pixels` is the linear probe on the subset's pixels.
- Transfer ({transfer_text}): the frozen encoder's linear probe and k-NN (settings as above) on
  another dataset's train/test splits, its images resized to the pretraining images' shape.
- n is the number of seeds per cell; with more than one, cells show mean ± standard deviation.

Pretraining runs (backbone `{backbone['name']}` layers {backbone['layers']}, channels {backbone['channels']}, stem
`{backbone['stem']}`, trained from scratch by every method for {epochs} epochs): [methods table](tables/methods.md)

{methods_md}

## Main table

{main_md}
## Seeds: intervals and paired differences

{intervals_md}
## Reproduction scorecard

Every row of `{reference.name}`, compared with the measured value where method, dataset, backbone,
protocol and budget match, otherwise marked not comparable with the reasons:
{counts}. [CSV](tables/scorecard.csv) · [LaTeX](tables/scorecard.tex)

{scorecard_md}
## Figures

{figures_md}
## Files

{files_md}

## Run record

- Machine: {machine_text}
- Packages: {versions_text}
- Pretraining kernels (`pretrain.deterministic`, from each run's config.json): {kernels}
- Pretraining precision (`pretrain.amp`, from each run's config.json): {precision}
- Wall time per stage (Snakemake's benchmark files, seconds; DVC writes none):

{walltime_md}
<details><summary>Params of this run (the merged config every job read)</summary>

```yaml
{yaml.safe_dump(params, sort_keys=False, default_flow_style=None, width=100).strip()}
```
</details>
"""
