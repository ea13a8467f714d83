"""The report's figures, each from saved results, each declared once where it is drawn:

    @figure("my_figure", title="My figure", reading="what index.md says under its title",
            caption="the longer caption of `snakemake --report`'s HTML report")
    def my_figure(inputs: ReportInputs, path: Path) -> None:
        ...  # draw from `inputs` (ReportInputs: histories, label efficiency, features, ...), then _save(fig, path)

That and its test are all a new figure needs: `write_figures` draws every declared figure in the
order of this file into figures/<name>.png, index.md shows its title and reading, and the
workflow's outputs (clusterssl.paths.report_files: Snakemake's rules, dvc.yaml's plots) and the
HTML report's captions come from the same declaration, read from this file's source with `ast`
(clusterssl.paths.read_figures) without importing matplotlib: the arguments of `@figure` must be
literals. Then run `clusterssl dvc-yaml`, which writes dvc.yaml anew (a test keeps it current)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .. import paths  # noqa: E402
from ..data import load_meta  # noqa: E402
from ..io import atomic_path, read_json  # noqa: E402


class ReportInputs:
    """What every figure draws from, built once per report; each input is read from the saved
    results when a figure first asks for it."""

    def __init__(self, params: dict, label_efficiency: pd.DataFrame):
        self.params = params
        #: test top-1 per row and share of labels, with 95 % t intervals (the report's label_efficiency.csv)
        self.label_efficiency = label_efficiency
        #: the first seed: features, confusion matrices and the embedding's subset come from its runs
        self.seed = params["seeds"][0]
        #: the 2-D embedding ("tsne" or "pca") and how many test images it shows
        self.embedding = params["report"]["embedding"]
        self.embedding_samples = params["report"]["embedding_samples"]

    @cached_property
    def histories(self) -> dict[str, list[pd.DataFrame]]:
        """Each pretrained method's history.csv, one per seed."""
        return {m: [pd.read_csv(paths.run_files(self.params, m, s)[1]) for s in self.params["seeds"]] for m in paths.methods(self.params)}

    @cached_property
    def classes(self) -> list[str]:
        return load_meta(paths.prepared_dir(self.params, self.params["dataset"]))["classes"]

    @cached_property
    def features(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(test features, test labels) of each encoder (raw pixels, then each method), first seed."""
        from ..evaluate.features import checked_features  # the evaluations' checks: shape, finite, provenance

        out = {}
        for m in paths.evaluated_methods(self.params):
            _, f = checked_features(self.params, m, self.seed, self.params["dataset"])
            out[m] = (f["test_features"], f["test_labels"])
        return out

    @cached_property
    def confusion(self) -> dict[str, list]:
        """The k-means confusion matrix of each encoder that has one (first seed)."""
        matrices = {m: read_json(paths.metrics_file(self.params, m, self.seed, "cluster"))["metrics"]["kmeans"].get("confusion")
                    for m in paths.evaluated_methods(self.params)}
        return {m: c for m, c in matrices.items() if c is not None}


@dataclass(frozen=True)
class Figure:
    name: str  # its file is figures/<name>.png
    title: str  # index.md's heading of it
    reading: str  # index.md's one line on how to read it
    caption: str  # its caption in `snakemake --report`'s HTML report
    draw: Callable[[ReportInputs, Path], None]

    @property
    def file(self) -> str:
        return f"{self.name}.png"


#: every declared figure by name, in the order of this file (the report's order)
FIGURES: dict[str, Figure] = {}


def figure(name: str, *, title: str, reading: str, caption: str):
    """Declare the decorated `draw(inputs, path)` as the report's figure `name` (literal arguments:
    the workflow reads them from this file's source)."""
    def register(draw: Callable[[ReportInputs, Path], None]):
        if name in FIGURES:
            raise ValueError(f"figure '{name}' is declared twice: {FIGURES[name].draw.__name__} and {draw.__name__}")
        FIGURES[name] = Figure(name, title, reading, caption, draw)
        return draw
    return register


#: one colour per report row, the same in every figure (tab10 for the methods, greys for the baselines)
def method_colours() -> dict:
    from ..paths import RAW_PIXELS, SCRATCH, all_methods

    cmap = plt.get_cmap("tab10")
    return {**{m: cmap(i % cmap.N) for i, m in enumerate(all_methods())}, RAW_PIXELS: "0.45", SCRATCH: "0.0"}


def colour(method: str):
    """A row's colour; computed when drawn, so that methods of the params' plugins have theirs."""
    return method_colours().get(method, "k")

TERM_STYLES = ["-", "--", ":", "-.", (0, (1, 3)), (0, (5, 1))]


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


@figure("training_curves", title="Training curves",
        reading="the loss and each of its terms per epoch, one panel per method.",
        caption="Training curves: the loss (solid) and each of its terms (other line styles) per epoch, one panel "
                "per method in its colour; all seeds overlaid.")
def training_curves_figure(inputs: ReportInputs, path: Path) -> None:
    """The loss and each of its terms per epoch, one panel per method in its colour (the total
    solid, each term in its own line style; all seeds overlaid)."""
    histories = inputs.histories
    fig, axes = plt.subplots(1, len(histories), figsize=(4.2 * len(histories), 3.4), squeeze=False)
    for ax, (method, runs) in zip(axes[0], histories.items()):
        for s, h in enumerate(runs):
            terms = ["loss", *(c for c in h.columns if c not in LOG_COLUMNS and c != "loss")]
            for t, style in zip(terms, TERM_STYLES):
                ax.plot(h["epoch"], h[t], ls=style, color=colour(method), marker="o" if t == "loss" else None, ms=3,
                        label=("total loss" if t == "loss" else t) if s == 0 else None)
        ax.set_title(method, color=colour(method))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (per epoch mean)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    _save(fig, path)


#: history.csv columns that are not loss terms
LOG_COLUMNS = {"epoch", "lr", "seconds", "images_per_s", "online_knn20_top1", "prototypes", "prototypes_used", "prototype_entropy"}


def _per_epoch(ax, histories: dict, column: str, transform=lambda h, v: v) -> bool:
    drawn = False
    for method, runs in histories.items():
        for s, h in enumerate(runs):
            if column in h:
                ax.plot(h["epoch"], transform(h, h[column]), color=colour(method), marker="o", ms=3, label=method if s == 0 else None)
                drawn = True
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return drawn


def _nothing(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


@figure("online_knn", title="Online k-NN",
        reading="k-NN (k = 20) top-1 of each encoder on a fixed train subset after every epoch: how fast each method learns.",
        caption="Online k-NN monitor: after every pretraining epoch, the weighted k-NN (k = 20) top-1 of the "
                "evaluation encoder on a fixed subset of the train split (a bank of up to 4,000 images, up to "
                "1,000 others scored); the test split is never read. A cheap view of how fast each method learns.")
def online_knn_figure(inputs: ReportInputs, path: Path) -> None:
    """The online k-NN monitor (k = 20 on a fixed train subset) per epoch, one line per method."""
    histories = inputs.histories
    fig, ax = plt.subplots(figsize=(6, 3.8))
    if _per_epoch(ax, histories, "online_knn20_top1"):
        ax.set_ylabel("online k-NN (k=20) top-1 %")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        _nothing(ax, "no run logged the online k-NN monitor")
    ax.set_title("online k-NN monitor during pretraining (fixed train subset)")
    _save(fig, path)


@figure("prototype_usage", title="Prototype use",
        reading="for CARL, SwAV and CoKe, the share of prototypes that receive a training sample and the evenness "
                "of their use, per epoch; a collapse shows as a drop.",
        caption="Prototype use per epoch for the methods with prototypes (CARL, SwAV, CoKe's largest head): left, "
                "the share of the K prototypes that at least one training sample was assigned to (argmax); right, "
                "the entropy of their use divided by log K (1: every prototype used equally). A collapse shows as "
                "a drop in both.")
def prototype_usage_figure(inputs: ReportInputs, path: Path) -> None:
    """Per epoch, for the methods with prototypes (CARL, SwAV, CoKe): the share of prototypes
    used by at least one sample, and the entropy of their use over log K (1: even use)."""
    histories = inputs.histories
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    share = lambda h, v: 100 * v / h["prototypes"]
    with_protos = {m: r for m, r in histories.items() if any("prototypes_used" in h for h in r)}
    if _per_epoch(axes[0], with_protos, "prototypes_used", share):
        _per_epoch(axes[1], with_protos, "prototype_entropy")
        k = {m: int(r[0]["prototypes"].iloc[0]) for m, r in with_protos.items()}
        for line in axes[0].get_lines():
            if line.get_label() in k:
                line.set_label(f"{line.get_label()} (K = {k[line.get_label()]})")
        axes[0].set_ylabel("prototypes used (% of K)")
        axes[0].set_ylim(0, 105)
        axes[1].set_ylabel("entropy of use / log K")
        axes[1].set_ylim(0, 1.05)
        axes[1].legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        for ax in axes:
            _nothing(ax, "no method with prototypes in this run")
    fig.suptitle("prototype use during pretraining (argmax assignment of each training sample)")
    _save(fig, path)


@figure("label_efficiency", title="Label efficiency",
        reading="test top-1 against the share of labels: fine-tuned at each semi-supervised fraction, the frozen "
                "linear probe at 100 %.",
        caption="Label efficiency: test top-1 against the share of labelled training images (log scale) — each row "
                "fine-tuned at every semi-supervised fraction (circles), the frozen linear probe at 100 % (squares) "
                "— with 95 % t intervals over seeds as error bars (none with one seed). The CSV holds the numbers.")
def label_efficiency_figure(inputs: ReportInputs, path: Path) -> None:
    """Test top-1 against the share of labels (log scale): fine-tuning at each semi-supervised
    fraction, the frozen linear probe at 100 %; error bars are 95 % t intervals over seeds."""
    table = inputs.label_efficiency
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, g in table.groupby("method", sort=False):
        for protocol, marker, style in (("fine-tune", "o", "-"), ("frozen linear probe", "s", "none")):
            p = g[g["protocol"] == protocol]
            if p.empty:
                continue
            err = None
            if p["low"].notna().any():
                err = [(p["mean"] - p["low"]).fillna(0).values, (p["high"] - p["mean"]).fillna(0).values]
            ax.errorbar(p["labels_percent"], p["mean"], yerr=err, color=colour(method), marker=marker, ls=style, capsize=3,
                        label=method if protocol == "fine-tune" or g["protocol"].nunique() == 1 else None)
    # t intervals over two or three seeds can be wide: the axes follow the means, longer bars are cut
    low, high = table["mean"].min(), table["mean"].max()
    pad = max(2.0, 0.15 * (high - low))
    ax.set_ylim(max(0, low - pad), min(100, high + pad))
    ax.set_xscale("log")
    ticks = sorted(pd.unique(table["labels_percent"]))
    ax.set_xticks(ticks, [f"{t:g} %" for t in ticks])
    ax.set_xlabel("labelled training images (circles: fine-tuned; squares at 100 %: frozen linear probe)")
    ax.set_ylabel("test top-1 %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def embed_2d(x: np.ndarray, kind: str, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    if kind == "pca" or x.shape[1] <= 2:
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE

    if x.shape[1] > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    return TSNE(n_components=2, init="pca", perplexity=min(30, len(x) // 4), random_state=seed).fit_transform(x)


@figure("embeddings", title="Embeddings", reading="2-D embedding of test features per encoder, coloured by class.",
        caption="2-D embeddings (t-SNE or PCA, the report's setting) of a fixed random subset of test features per "
                "encoder (seed of the first run), coloured by class.")
def embedding_figure(inputs: ReportInputs, path: Path) -> None:
    """2-D embedding (t-SNE or PCA) of a fixed random subset of test features, coloured by class."""
    features, kind, samples, seed, classes = inputs.features, inputs.embedding, inputs.embedding_samples, inputs.seed, inputs.classes
    fig, axes = plt.subplots(1, len(features), figsize=(4 * len(features), 4.6), squeeze=False)
    for ax, (method, (x, y)) in zip(axes[0], features.items()):
        idx = np.random.default_rng(seed).permutation(len(y))[:samples]
        e = embed_2d(x[idx].astype(np.float32), kind, seed)
        ax.scatter(e[:, 0], e[:, 1], c=y[idx], cmap="tab10", s=3, vmin=0, vmax=9)
        ax.set_title(method, color=colour(method))
        ax.set_xticks([])
        ax.set_yticks([])
    cmap = plt.get_cmap("tab10")
    handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i), label=c) for i, c in enumerate(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(classes), 10), fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.12)
    _save(fig, path)


@figure("confusion", title="k-means confusion",
        reading="k-means clusters (K = classes) matched to classes by the Hungarian method; rows are true classes.",
        caption="k-means confusion matrices: per encoder, k-means (K = number of classes) on its test features, "
                "each cluster matched to a class by the Hungarian method; rows are the true classes, normalised, "
                "and the title gives the matched accuracy (ACC).")
def confusion_figure(inputs: ReportInputs, path: Path) -> None:
    """Per method, the k-means clusters' confusion matrix after Hungarian matching, rows
    normalised (true class -> the class its cluster was matched to); the title gives ACC."""
    matrices, classes = inputs.confusion, inputs.classes
    n = len(matrices)
    if n == 0:
        fig, ax = plt.subplots(figsize=(5, 2))
        _nothing(ax, "no cluster metrics with a confusion matrix")
        return _save(fig, path)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 1, 3.3 * rows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    for i, (ax, (method, m)) in enumerate(zip(axes.flat, matrices.items())):
        m = np.asarray(m, dtype=float)[:, : len(classes)]
        acc = np.trace(m) / max(m.sum(), 1)
        im = ax.imshow(m / np.maximum(m.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{method}: ACC {acc:.3f}", color=colour(method), fontsize=10)
        ticks = range(len(classes))
        ax.set_xticks(ticks, classes if i // cols == rows - 1 or i + cols >= n else [], rotation=90, fontsize=7)
        ax.set_yticks(ticks, classes if i % cols == 0 else [], fontsize=7)
    fig.supxlabel("matched cluster (named by its class)")
    fig.supylabel("true class")
    fig.colorbar(im, ax=axes, shrink=0.8 if rows > 1 else 1.0, label="share of the true class")
    _save(fig, path)
