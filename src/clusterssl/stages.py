"""The params keys each stage reads — the single list that dvc.yaml's `params:` sections and
the Snakemake rules' `params:` (their re-run trigger) are checked against in the tests."""
from __future__ import annotations

from . import registry

STAGE_PARAMS: dict[str, list[str]] = {
    "fetch": ["paths.data"],
    "prepare": ["paths.data"],
    "split": ["paths.data"],
    "pretrain": ["dataset", "paths", "data", "backbone", "augment", "pretrain", "method_params.{method}"],
    "embed": ["dataset", "paths", "eval.max_train", "eval.batch_size", "pretrain.device"],
    # each protocol on frozen features (linear, knn, cluster, ...: registry.protocols) reads its eval section
    **{name: ["dataset", "paths", f"eval.{name}"] for name in registry.protocols()},
    "transfer": ["dataset", "paths", "eval.linear", "eval.knn"],
    "semisup": ["dataset", "paths", "backbone", "pretrain.device", "pretrain.amp", "pretrain.channels_last", "eval.batch_size", "eval.linear", "eval.semisup"],
    "report": ["dataset", "methods", "seeds", "paths", "eval.semisup.fractions", "eval.transfer.datasets", "report"],
}


def lookup(params: dict, key: str):
    """params['a']['b'] for the dotted key 'a.b'."""
    for part in key.split("."):
        params = params[part]
    return params


def stage_params(params: dict, stage: str, method: str | None = None) -> dict:
    """The values of the keys `stage` reads, as a flat {dotted key: value} dict."""
    return {key: lookup(params, key) for key in (k.format(method=method) for k in STAGE_PARAMS[stage])}
