"""Protocols on frozen features declare themselves (`@protocol` in a module of evaluate/): the
registry reads the declarations from source, and the CLI, paths, stages, schema, report columns
and dvc.yaml follow them. A protocol added by a test (nearest class centroid) gets its eval
section filled and checked, its metrics file, its report columns and its DVC stages."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from clusterssl import paths, registry, stages
from clusterssl.config import load_schema, validate
from clusterssl.io import UserError
from conftest import PARAMS_YAML

CENTROID = registry.ProtocolSpec("centroid", __name__, 40, [["centroid_top1", ["top1"], True, "centroid top-1 %"]],
                                 {"normalise": True}, {"normalise": {"type": "boolean"}})


def nearest_centroid(f: dict, cfg: dict, seed: int) -> dict:
    """Top-1 of the nearest class mean of the train features."""
    train, test = f["train_features"], f["test_features"]
    if cfg["centroid"]["normalise"]:
        train, test = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (train, test))
    classes = np.unique(f["train_labels"])
    means = np.stack([train[f["train_labels"] == c].mean(0) for c in classes])
    predicted = classes[((test[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
    return {"top1": float((predicted == f["test_labels"]).mean())}


@pytest.fixture
def with_centroid(monkeypatch):
    builtin = registry.protocols()
    monkeypatch.setattr(registry, "protocols", lambda: {**builtin, "centroid": CENTROID})
    monkeypatch.setitem(registry.PROTOCOL_FUNCTIONS, "centroid", nearest_centroid)


def test_the_built_in_protocols_are_read_from_their_declarations():
    assert paths.evals()[:3] == ["linear", "knn", "cluster"] and paths.protocols() == [*paths.evals(), "transfer", "semisup"]
    assert all(stages.STAGE_PARAMS[p] == ["dataset", "paths", f"eval.{p}"] for p in paths.evals())
    from clusterssl.report import frozen_columns

    assert [c[0] for c in frozen_columns()][:3] == ["linear_top1", "knn200_top1", "knn20_top1"]
    assert {c[1] for c in frozen_columns()} == set(paths.evals())
    for name in paths.evals():
        assert callable(registry.protocol_function(name))
    with pytest.raises(UserError, match="unknown protocol 'nosuch'"):
        registry.protocol_function("nosuch")


def test_a_new_protocol_gets_its_settings_metrics_columns_and_stages(with_centroid, tmp_path):
    params = yaml.safe_load(PARAMS_YAML.read_text())
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    params = validate(params)
    assert params["eval"]["centroid"] == {"normalise": True}  # from its declared defaults
    assert "centroid" in load_schema()["properties"]["eval"]["properties"]
    bad = yaml.safe_load(PARAMS_YAML.read_text())
    bad["eval"]["centroid"] = {"normalise": "yes"}
    with pytest.raises(UserError, match="'eval.centroid.normalise'"):
        validate(bad)

    assert "centroid" in paths.evaluations(params, "carl") and paths.protocols()[3] == "centroid"
    from clusterssl.report import columns

    assert ("centroid_top1", "centroid", ("top1",), True, "centroid top-1 %") in columns(params)
    from clusterssl.dvcgen import render

    stages_ = yaml.safe_load(render())["stages"]
    assert stages_["evaluate"]["matrix"]["protocol"] == stages_["evaluate_raw_pixels"]["matrix"]["protocol"] == [*paths.evals()]
    assert paths.evals()[-1] == "centroid"

    from clusterssl.evaluate.run import evaluate

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    features = rng.normal(size=(40, 4)) + 4 * labels[:, None]
    f = paths.features_file(params, paths.RAW_PIXELS, 0)
    f.parent.mkdir(parents=True)
    source = {"method": paths.RAW_PIXELS, "seed": 0, "dataset": params["dataset"], "pretrained_on": params["dataset"],
              "checkpoint_sha256": paths.RAW_PIXELS, "params_fingerprint": "0" * 16, "num_classes": 2}  # what embed records
    np.savez(f, train_features=features, train_labels=labels, test_features=features, test_labels=labels,
             provenance=np.array(json.dumps(source)))
    out = evaluate(params, "centroid", paths.RAW_PIXELS, 0)
    record = json.loads(out.read_text())
    assert out == paths.metrics_file(params, paths.RAW_PIXELS, 0, "centroid")
    assert record["protocol"] == "centroid" and record["settings"] == {"normalise": True}
    expected = nearest_centroid({"train_features": features, "train_labels": labels, "test_features": features, "test_labels": labels}, params["eval"], 0)
    assert record["metrics"] == pytest.approx(expected) and expected["top1"] > 0.9


def test_a_protocol_registered_twice_or_declared_with_a_non_literal_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text('@protocol("linear")\ndef again(f, cfg, seed):\n    return {}\n')
    monkeypatch.setattr(registry, "EVALUATE_DIR", tmp_path)
    (tmp_path / "b.py").write_text('@protocol("linear")\ndef twice(f, cfg, seed):\n    return {}\n')
    registry.protocols.cache_clear()
    try:
        with pytest.raises(UserError, match="protocol 'linear' is registered twice"):
            registry.protocols()
        (tmp_path / "b.py").write_text('K = 3\n@protocol("other", order=K)\ndef other(f, cfg, seed):\n    return {}\n')
        registry.protocols.cache_clear()
        with pytest.raises(UserError, match="must be a literal"):
            registry.protocols()
    finally:
        monkeypatch.undo()
        registry.protocols.cache_clear()
