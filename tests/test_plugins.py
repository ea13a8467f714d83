"""Methods from outside the repository: a package's `clusterssl.methods` entry point, or a module
named by the params key `plugins`, registers a method that the registry, the schema, the CLI and
the whole workflow treat like a built-in one. The package used is examples/barlow_twins, the
README's example, "installed" as pip would: its module and a dist-info folder on the path."""
from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from clusterssl import paths, registry
from clusterssl.config import validate
from clusterssl.io import UserError
from clusterssl.methods.base import get_method
from conftest import ENV, PARAMS_YAML, ROOT, needs_fashion_mnist, preset_in, snakemake

EXAMPLE = ROOT / "examples" / "barlow_twins"


def install_example(site: Path) -> Path:
    """What `pip install examples/barlow_twins` puts in site-packages: the module, and the
    entry points its pyproject.toml declares in a dist-info folder."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE / "barlow_twins.py", site)
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = project["entry-points"]
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items()) for group, entries in groups.items()))
    return site


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry rereads entry points and plugins (it caches them per process); the classes
    a test registers are forgotten after it."""
    from clusterssl.methods import base

    monkeypatch.setattr(registry, "_plugins", [])
    monkeypatch.setattr(base, "REGISTRY", dict(base.REGISTRY))
    registry._specs.cache_clear()
    yield
    registry._specs.cache_clear()


@pytest.fixture
def installed(tmp_path, monkeypatch, fresh_registry):
    site = install_example(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))  # what an installed package's site-packages is
    yield site
    import sys

    sys.modules.pop("barlow_twins", None)


def test_an_installed_packages_method_is_registered_after_the_built_in_ones(installed):
    names = list(registry.methods())
    assert names[-1] == "barlow_twins" and names[:-1] == [n for n in names if registry.method(n).module.startswith("clusterssl.methods.")]
    assert paths.methods({"methods": "all"}) == names


def test_a_plugin_method_trains_validates_and_refuses_bad_values(installed, tiny_backbone, tmp_path):
    params = yaml.safe_load(PARAMS_YAML.read_text())
    params["methods"] = ["carl", "barlow_twins"]
    params = validate(params)  # its block comes from the defaults its file declares
    assert params["method_params"]["barlow_twins"] == {"off_diagonal_weight": 0.005, "projector_layers": 2, "projector_hidden": 512, "projector_out": 128}
    cls = get_method("barlow_twins")
    model = cls(tiny_backbone(), dict(params["method_params"]["barlow_twins"], projector_hidden=16, projector_out=8), 10, 6)
    g = torch.Generator().manual_seed(0)
    out = model.training_step({"views": [torch.randn(6, 1, 8, 8, generator=g) for _ in range(2)], "index": torch.arange(6), "epoch": 0})
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad and set(out) == {"loss", "barlow_twins"}
    params["method_params"]["barlow_twins"]["off_diagonal_weight"] = -1
    with pytest.raises(UserError, match="method_params.barlow_twins.off_diagonal_weight"):
        validate(params)


def test_the_loss_of_the_example_is_zero_for_decorrelated_standardised_views(installed):
    from barlow_twins import barlow_twins_loss

    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # two uncorrelated unit features
    n = len(z)
    # identical views: c = (n-1)/n on the diagonal (the unbiased std), 0 off it
    assert barlow_twins_loss(z, z, 1.0).item() == pytest.approx(2 * (1 / n) ** 2, abs=1e-5)
    assert barlow_twins_loss(z, -z, 0.0).item() == pytest.approx(2 * (1 + (n - 1) / n) ** 2, abs=1e-4)


def test_the_params_key_plugins_names_a_module_to_register(tmp_path, monkeypatch, fresh_registry):
    (tmp_path / "lab").mkdir()
    source = (EXAMPLE / "barlow_twins.py").read_text().replace('@register("barlow_twins")', '@register("our_twins")')
    (tmp_path / "lab" / "our_method.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path / "lab"))
    params = yaml.safe_load(PARAMS_YAML.read_text())
    params.update(methods=["our_twins"])
    with pytest.raises(UserError, match="our_twins"):  # not registered until named
        validate(yaml.safe_load(yaml.safe_dump(params)))
    params["plugins"] = ["our_method"]
    assert "our_twins" in validate(params)["method_params"]
    assert get_method("our_twins").__module__ == "our_method"


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace('defaults = {"off_diagonal_weight": 0.005', 'defaults = {"off_diagonal_weight": 1 / 200'), "must be a literal"),
    (lambda s: s.replace('{"off_diagonal_weight": {"type": "number", "minimum": 0}, ', "{"), "same keys"),
    (lambda s: s.replace('@register("barlow_twins")', '@register("simclr")'), "registered twice"),
    (lambda s: s.replace("    provenance = ", "    origin = "), "does not declare provenance"),
])
def test_a_plugin_that_declares_its_facts_wrongly_is_one_clear_error(tmp_path, monkeypatch, fresh_registry, edit, message):
    (tmp_path / "bad_plugin.py").write_text(edit((EXAMPLE / "barlow_twins.py").read_text()))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=message):
        registry.methods(["bad_plugin"])


def test_a_plugin_module_that_cannot_be_found_is_one_clear_error(fresh_registry, capsys, tmp_path):
    from clusterssl.cli import main

    params = yaml.safe_load(PARAMS_YAML.read_text())
    params["plugins"] = ["no_such_module_here"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    assert main(["--params", str(tmp_path / "p.yaml"), "data", "fetch", "digits"]) == 2
    err = capsys.readouterr().err
    assert "no_such_module_here" in err and "PYTHONPATH" in err and "Traceback" not in err


def test_the_readme_shows_the_example_method_as_tested():
    """README's "Extending" section holds examples/barlow_twins/barlow_twins.py verbatim."""
    assert (EXAMPLE / "barlow_twins.py").read_text().strip() in (ROOT / "README.md").read_text()


@pytest.mark.e2e
@needs_fashion_mnist
def test_a_method_from_outside_the_repository_runs_through_the_whole_tiny_dag(tmp_path):
    """The example package, installed outside the repository, runs through pretraining, every
    evaluation and the report, with no file of the repository edited."""
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    site = install_example(tmp_path / "site")
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    work = tmp_path / "work"
    work.mkdir()
    params = preset_in(work, methods=["barlow_twins"])
    snakemake(work, params, "--cores", "2", "-q", env=env)
    table = pd.read_csv(work / "results/report/tables/main.csv").set_index("method")
    assert list(table.index) == [paths.RAW_PIXELS, paths.SCRATCH, "barlow_twins"]
    row = table.loc["barlow_twins"]
    for column in ("linear_top1_mean", "knn20_top1_mean", "kmeans_acc_mean", "semisup_0.01_top1_mean", "semisup_0.1_top1_mean",
                   "transfer_fashion_mnist_linear_top1_mean"):
        assert row[column] == row[column], column  # measured, not NaN
    history = pd.read_csv(work / "results/runs/digits/barlow_twins/seed0/history.csv")
    assert "barlow_twins" in history.columns and len(history) == yaml.safe_load(params.read_text())["pretrain"]["epochs"]
    assert subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout == before


def test_a_plugin_methods_recipe_is_searched_like_the_built_in_ones(installed, tmp_path):
    """`clusterssl tune --method barlow_twins`: its candidates are read and set like any method's."""
    from clusterssl import tune

    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump({"proxy": {"holdout": 30, "pretrain_images": 60, "epochs": 1, "probe_images": 60, "seed": 0},
                                      "candidates": 2, "methods": {"barlow_twins": [{}, {"off_diagonal_weight": 0.01}]}}))
    loaded = tune.load_search(search)
    params = validate(yaml.safe_load(PARAMS_YAML.read_text()))
    assert tune.with_overrides(params, "barlow_twins", loaded["methods"]["barlow_twins"][1], "t")["method_params"]["barlow_twins"]["off_diagonal_weight"] == 0.01
    with pytest.raises(UserError, match="method_params.barlow_twins"):
        tune.with_overrides(params, "barlow_twins", {"off_diagonal_wieght": 0.01}, "t")
