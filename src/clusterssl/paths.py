"""Every output path, derived from params in one place (CLI, Snakemake, DVC and report use it)."""
from __future__ import annotations

from pathlib import Path

RAW_PIXELS = "raw_pixels"  # the no-learning baseline row: flattened pixels through every evaluation
SCRATCH = "scratch"  # the semi-supervised baseline row: the same backbone, randomly initialised


def evals() -> list[str]:
    """The frozen-feature protocols on the pretraining dataset (each a `@protocol` in evaluate/)."""
    from . import registry

    return list(registry.protocols())


def protocols() -> list[str]:
    """Every `clusterssl eval` protocol."""
    return [*evals(), "transfer", "semisup"]


def data_dir(params: dict) -> Path:
    return Path(params["paths"]["data"])


def results_dir(params: dict) -> Path:
    return Path(params["paths"]["results"])


def raw_dir(params: dict, dataset: str) -> Path:
    return data_dir(params) / "raw" / dataset


def prepared_dir(params: dict, dataset: str) -> Path:
    return data_dir(params) / "prepared" / dataset


def is_sharded(dataset: str) -> bool:
    from .data import SOURCES  # here: the data package is not needed by most callers

    return getattr(SOURCES.get(dataset), "SHARDED", False)


def prepared_files(params: dict, dataset: str, sharded: bool | None = None) -> list[Path]:
    """What `prepare` writes; `sharded` for a wildcard pattern (by default: the dataset's kind)."""
    d = prepared_dir(params, dataset)
    if is_sharded(dataset) if sharded is None else sharded:  # the shards themselves are listed in these
        return [d / "train.shards.json", d / "test.shards.json", d / "meta.json"]
    return [d / "train.npz", d / "test.npz", d / "meta.json"]


def split_file(params: dict, dataset: str, fraction: float, seed: int) -> Path:
    """The indices of a class-balanced labelled subset of `dataset`'s train split."""
    return data_dir(params) / "splits" / dataset / f"semisup_{fraction}_seed{seed}.npy"


def run_dir(params: dict, method: str, seed: int) -> Path:
    return results_dir(params) / "runs" / params["dataset"] / method / f"seed{seed}"


def run_files(params: dict, method: str, seed: int) -> list[Path]:
    d = run_dir(params, method, seed)
    return [d / "checkpoint.pt", d / "history.csv", d / "config.json"]


def live_dir(params: dict, method: str, seed: int) -> Path:
    """A run's live training curves (clusterssl.live: dvclive's files, written as each epoch ends).
    Beside the run folder, not in it: that folder holds the run's outputs only, which the report
    and the evaluations read whole."""
    return results_dir(params) / "live" / params["dataset"] / method / f"seed{seed}"


def features_file(params: dict, method: str, seed: int, dataset: str | None = None) -> Path:
    dataset = dataset or params["dataset"]
    return results_dir(params) / "features" / params["dataset"] / method / f"seed{seed}" / f"{dataset}.npz"


def metrics_file(params: dict, method: str, seed: int, evaluation: str) -> Path:
    return results_dir(params) / "metrics" / params["dataset"] / method / f"seed{seed}" / f"{evaluation}.json"


def semisup_name(fraction: float) -> str:
    return f"semisup_{fraction}"


def transfer_name(target: str) -> str:
    return f"transfer_{target}"


def evaluations(params: dict, method: str) -> list[str]:
    """The metrics files (`metrics_file`'s `evaluation`) each report row needs: the frozen-feature
    protocols and transfer for every encoder, semi-supervised fine-tuning for every row, and
    only that for the from-scratch baseline (it has no pretrained features)."""
    semisup = [semisup_name(f) for f in params["eval"]["semisup"]["fractions"]]
    if method == SCRATCH:
        return semisup
    return [*evals(), *semisup, *(transfer_name(t) for t in params["eval"]["transfer"]["datasets"])]


def merged_params_dir(params: dict) -> Path:
    """Where Snakemake writes the config it validated (params file, presets and --config merged),
    one file per config, named by its fingerprint: every verb of the workflow reads it with
    --params, and two invocations with different --config sharing a results folder (a `--lint`
    during a three-seed run) each keep their own."""
    return results_dir(params) / "params"


def report_dir(params: dict) -> Path:
    return results_dir(params) / "report"


REPORT_TABLES = ("main", "intervals", "scorecard", "methods")  # each as .csv, .md and .tex (intervals: .csv with paired.csv)
FIGURES_SOURCE = Path(__file__).parent / "report" / "figures.py"  # where each report figure declares itself
FIGURE_FACTS = ("title", "reading", "caption")  # the keyword arguments of its `@figure("name", ...)`


def read_figures(source: Path = FIGURES_SOURCE) -> dict[str, dict[str, str]]:
    """{name: {"title", "reading", "caption"}} of each `@figure("name", title=..., reading=...,
    caption=...)` in `source`, in the file's order (the report's). Read from the source
    (registry.decorated), not imported: the workflow asks at every start, and figures.py imports
    matplotlib."""
    from . import registry
    from .io import UserError

    out: dict[str, dict[str, str]] = {}
    for node, args, kwargs in registry.decorated(source, "figure"):
        where = f"{source}: @figure on {node.name} (line {node.lineno})"
        if len(args) != 1 or not isinstance(args[0], str) or not args[0] or not all(c.isdigit() or c.islower() or c == "_" for c in args[0]):
            raise UserError(f"{where}: its one positional argument is the figure's name, lowercase letters, digits and _ "
                            "(the report writes figures/<name>.png)")
        if set(kwargs) != set(FIGURE_FACTS) or not all(isinstance(v, str) and v.strip() for v in kwargs.values()):
            raise UserError(f"{where}: declare {', '.join(f'{k}=' for k in FIGURE_FACTS)} each a non-empty string and nothing else "
                            f"(it has: {', '.join(kwargs) or 'none'})")
        if args[0] in out:
            raise UserError(f"{where}: figure '{args[0]}' is declared twice; rename one")
        out[args[0]] = {k: kwargs[k] for k in FIGURE_FACTS}
    return out


_report_figures: dict[str, dict[str, str]] = {}


def report_figures() -> dict[str, dict[str, str]]:
    """The report's figures as report/figures.py declares them (read_figures; read once per process)."""
    if not _report_figures:
        _report_figures.update(read_figures(FIGURES_SOURCE))
    return _report_figures


def report_files(params: dict) -> list[Path]:
    d = report_dir(params)
    t = d / "tables"
    return [
        *(t / f"{name}.{ext}" for name in REPORT_TABLES for ext in ("csv", "md", "tex")),
        t / "paired.csv",
        t / "runs.csv",
        t / "label_efficiency.csv",
        t / "walltime.csv",
        *(d / "figures" / f"{name}.png" for name in report_figures()),
        d / "metrics.json",
        d / "index.md",
    ]


def all_methods() -> list[str]:
    """Every registered method, in the order `methods: all` runs and reports them (CARL first,
    then the clustering methods, then the contrastive and distillation baselines, then plugins)."""
    from . import registry

    return list(registry.methods())


def methods(params: dict) -> list[str]:
    """The pretrained methods `params` selects (`methods: all` is every registered one)."""
    return all_methods() if params["methods"] == "all" else list(params["methods"])


def evaluated_methods(params: dict) -> list[str]:
    """Encoders with features: the raw-pixel baseline, then every pretrained method."""
    return [RAW_PIXELS, *methods(params)]


def report_rows(params: dict) -> list[str]:
    """Rows of the report: raw pixels, the from-scratch baseline, then every pretrained method."""
    return [RAW_PIXELS, SCRATCH, *methods(params)]
