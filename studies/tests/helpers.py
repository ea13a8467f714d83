"""Helpers of the studies' tests: the repository root, and made-up metrics files in the layout
the workflow writes (<results>/metrics/fashion_mnist/<method>/seed<N>/<evaluation>.json)."""
from __future__ import annotations

import json
from pathlib import Path

from clusterssl.config import load_params

ROOT = Path(__file__).resolve().parents[2]
STUDIES = ROOT / "studies"


def load_preset(name: str) -> dict:
    """`name` (params.yaml, or a preset under config/presets/) as the workflow runs it: a preset
    merged onto params.yaml by `clusterssl.config.load_params`, completed and validated."""
    return load_params(ROOT / "params.yaml", *([] if name == "params.yaml" else [ROOT / name]))


def write_scores(root: Path, method: str, seed: int, linear: float, knn20: float = 0.8, knn200: float = 0.7) -> None:
    write_metrics(root, method, seed, "linear", {"top1": linear})
    write_metrics(root, method, seed, "knn", {"k20_top1": knn20, "k200_top1": knn200})


def write_metrics(root: Path, method: str, seed: int, evaluation: str, metrics: dict) -> None:
    """A metrics file with the provenance every one records (clusterssl.report.read_metrics checks it)."""
    folder = root / "metrics" / "fashion_mnist" / method / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    held = {"method": method, "seed": seed, "pretrained_on": "fashion_mnist", "evaluation": evaluation, "checkpoint_sha256": "0" * 64}
    (folder / f"{evaluation}.json").write_text(json.dumps({**held, "metrics": metrics}))
