"""Datasets own their facts: each module of src/clusterssl/data/ declares the datasets it provides
(`DATASETS`, with each one's shape and classes), and the registry, the params schema, the CLI and
the workflow derive from those declarations. A dataset from outside the repository (an installed
package's `clusterssl.datasets` entry point, or a module named by the params key `plugins`) is
registered, validated, fetched and prepared like a built-in one, with no file of the repository
edited."""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from clusterssl import data, paths, registry
from clusterssl.cli import main
from clusterssl.config import load_schema, validate
from clusterssl.data import registry as datasets
from clusterssl.io import UserError
from conftest import ENV, PARAMS_YAML, ROOT

BUILT_IN = {  # name: (title, shape, classes, sharded)
    "cifar10": ("CIFAR-10", (32, 32, 3), 10, False),
    "cifar100": ("CIFAR-100", (32, 32, 3), 100, False),
    "cifar100_20": ("CIFAR-100 (20 superclasses)", (32, 32, 3), 20, False),
    "digits": ("digits (8x8)", (8, 8, 1), 10, False),
    "fashion_mnist": ("Fashion-MNIST", (28, 28, 1), 10, False),
    "imagenet": ("ImageNet-1k", (224, 224, 3), 1000, True),
    "imagenet100": ("ImageNet-100", (224, 224, 3), 100, True),
    "stl10": ("STL-10", (96, 96, 3), 10, False),
}

# a whole dataset module, as someone outside the repository writes it: 40 random 8x8 grey images
# of 2 classes (dark and light), 30 to train on and 10 to test
TINY = '''\
"""A tiny dataset from outside the repository: random 8x8 grey images of 2 classes."""
import sys
from pathlib import Path

import numpy as np

CLASSES = ("dark", "light")
SHAPE = (8, 8, 1)
TITLE = "Tiny"


def fetch(out_dir):
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    images = (rng.integers(0, 128, (40, 8, 8, 1)) + 127 * labels[:, None, None, None]).astype(np.uint8)
    np.savez(Path(out_dir) / "tiny.npz", images=images, labels=labels)


def load_raw(raw_dir):
    with np.load(Path(raw_dir) / "tiny.npz") as z:
        images, labels = z["images"], z["labels"]
    return (images[:30], labels[:30]), (images[30:], labels[30:])


DATASETS = {"tinyset": sys.modules[__name__]}
'''


def write_module(folder: Path, module: str, name: str, edit=lambda s: s) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(edit(TINY.replace('"tinyset"', f'"{name}"')))
    return folder


def install(site: Path, module: str, name: str) -> Path:
    """What `pip install` of a package declaring `[project.entry-points."clusterssl.datasets"]
    name = "module"` puts in site-packages: the module, and a dist-info folder naming it."""
    write_module(site, module, name)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[clusterssl.datasets]\n{name} = {module}\n")
    return site


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The registries as they were before the test (datasets and methods from `plugins` included),
    and the test's own modules (written under tmp_path) forgotten afterwards."""
    saved = dict(data.SOURCES), dict(datasets._declared_in), list(datasets._plugins)
    monkeypatch.setattr(registry, "_plugins", [])
    registry._specs.cache_clear()
    yield
    data.SOURCES.clear()
    data.SOURCES.update(saved[0])
    datasets._declared_in.clear()
    datasets._declared_in.update(saved[1])
    datasets._plugins[:] = saved[2]
    registry._specs.cache_clear()
    for name, module in list(sys.modules.items()):
        if Path(getattr(module, "__file__", None) or "/").is_relative_to(tmp_path):
            sys.modules.pop(name)
    importlib.invalidate_caches()


def params_file(tmp_path: Path, dataset: str, **keys) -> Path:
    params = yaml.safe_load(PARAMS_YAML.read_text())
    params.update(dataset=dataset, paths={"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}, **keys)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def transfer_enum(schema: dict) -> list[str]:
    return schema["properties"]["eval"]["properties"]["transfer"]["properties"]["datasets"]["items"]["enum"]


def fetch_and_prepare(capsys, params: Path, name: str) -> dict:
    """`clusterssl data fetch NAME` and `data prepare NAME`; the prepared meta.json."""
    p = yaml.safe_load(params.read_text())
    for verb in ("fetch", "prepare"):
        rc, out, err = cli(capsys, "--params", params, "data", verb, name)
        assert rc == 0, err
    assert out.strip() == str(paths.prepared_dir(p, name))
    return data.load_meta(paths.prepared_dir(p, name))


def assert_tiny_prepared(meta: dict, params: Path, name: str) -> None:
    assert (meta["name"], meta["classes"], meta["image_shape"], meta["num_train"], meta["num_test"]) == (
        name, ["dark", "light"], [8, 8, 1], 30, 10)
    train = data.load_prepared(paths.prepared_dir(yaml.safe_load(params.read_text()), name), "train")
    assert train.images.shape == (30, 8, 8, 1) and train.images.dtype == np.uint8 and set(train.labels) == {0, 1}


# --- the built-in datasets: what their modules declare ------------------------------------------------
def test_the_registry_is_what_the_modules_of_the_package_declare():
    declared = {}
    for info in pkgutil.iter_modules(data.__path__):
        declared.update(getattr(importlib.import_module(f"clusterssl.data.{info.name}"), "DATASETS", {}))
    assert data.SOURCES == declared and set(declared) >= set(BUILT_IN)
    assert all(data.SOURCES[name] is source for name, source in declared.items())
    schema = load_schema()
    assert schema["properties"]["dataset"]["enum"] == list(data.SOURCES)
    assert transfer_enum(schema) == [n for n in data.SOURCES if not paths.is_sharded(n)]
    assert set(transfer_enum(schema)) >= {n for n, facts in BUILT_IN.items() if not facts[3]}  # not ImageNet
    assert not set(transfer_enum(schema)) & {n for n, facts in BUILT_IN.items() if facts[3]}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_each_dataset_declares_its_name_shape_and_classes(name):
    facts = data.describe(name)
    assert (facts.name, facts.title, facts.shape, facts.num_classes, facts.sharded) == (name, *BUILT_IN[name])
    assert facts.module.startswith("clusterssl.data.") and paths.is_sharded(name) == facts.sharded
    source = data.SOURCES[name]
    if "CLASSES" in type(source).__dict__ or hasattr(source, "__file__"):  # ImageNet's reads timm's list: not here
        assert len(source.CLASSES) == facts.num_classes


def test_importing_the_data_package_or_validating_params_imports_no_torch():
    """The workflow imports the data package and validates its params at every start."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", "import clusterssl.data"], capture_output=True, text=True,
                         env=ENV, check=True)
    assert "clusterssl.data.registry" in run.stderr and "torch" not in run.stderr
    check = "import sys; from clusterssl.config import load_params; load_params('params.yaml'); print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    run = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, env=ENV, check=True)
    assert run.stdout.strip() == "[]"


def test_a_new_module_in_the_package_is_registered_with_no_other_file_edited(tmp_path, monkeypatch, fresh, capsys):
    """What adding a dataset to src/clusterssl/data/ takes: its module (here in a folder added to
    the package's path, so that the repository stays as it is)."""
    before = set(data.SOURCES)
    monkeypatch.setattr(data, "__path__", [*data.__path__, str(write_module(tmp_path / "pkg", "newset", "newset"))])
    data.refresh()
    assert set(data.SOURCES) == {*before, "newset"} and data.describe("newset").module == "clusterssl.data.newset"
    schema = load_schema()
    assert "newset" in schema["properties"]["dataset"]["enum"] and "newset" in transfer_enum(schema)
    params = params_file(tmp_path, "newset")
    assert_tiny_prepared(fetch_and_prepare(capsys, params, "newset"), params, "newset")


# --- datasets from outside the repository --------------------------------------------------------------
def test_an_installed_packages_dataset_is_registered_fetched_and_prepared(tmp_path, monkeypatch, fresh, capsys):
    monkeypatch.syspath_prepend(str(install(tmp_path / "site", "tinyset", "tinyset")))
    assert "tinyset" not in data.SOURCES  # entry points are read when the package is imported
    data.refresh()
    assert list(data.SOURCES)[-1] == "tinyset"
    assert data.describe("tinyset") == datasets.DatasetFacts("tinyset", "Tiny", (8, 8, 1), 2, False, "tinyset")
    schema = load_schema()
    assert "tinyset" in schema["properties"]["dataset"]["enum"] and "tinyset" in transfer_enum(schema)
    params = params_file(tmp_path, "tinyset")
    assert validate(yaml.safe_load(params.read_text()))["dataset"] == "tinyset"
    assert_tiny_prepared(fetch_and_prepare(capsys, params, "tinyset"), params, "tinyset")


def test_a_new_process_finds_an_installed_dataset_selected_by_a_preset(tmp_path):
    """As a user runs it: the package installed (on PYTHONPATH here), a preset overlay selecting its
    dataset merged onto the project's params.yaml, and `clusterssl data fetch/prepare NAME`."""
    site = install(tmp_path / "site", "tinyset", "tinyset")
    preset = tmp_path / "tiny-dataset.yaml"
    preset.write_text(yaml.safe_dump({"dataset": "tinyset", "paths": {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}}))
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    for verb in ("fetch", "prepare"):
        run = subprocess.run([sys.executable, "-m", "clusterssl.cli", "--params", ROOT / "params.yaml", "--preset", preset,
                              "data", verb, "tinyset"], cwd=tmp_path, capture_output=True, text=True, env=env, check=False)
        assert run.returncode == 0, run.stderr
    meta = json.loads((tmp_path / "data/prepared/tinyset/meta.json").read_text())
    assert (meta["name"], meta["image_shape"], meta["num_train"]) == ("tinyset", [8, 8, 1], 30)


def test_the_params_key_plugins_names_a_dataset_module(tmp_path, monkeypatch, fresh, capsys):
    monkeypatch.syspath_prepend(str(write_module(tmp_path / "lab", "lab_data", "labset")))
    params = params_file(tmp_path, "labset")
    rc, _, err = cli(capsys, "--params", params, "data", "fetch", "labset")  # not registered until named
    assert rc == 2 and "invalid value for key 'dataset'" in err and "labset" in err
    assert "labset" in load_schema(["lab_data"])["properties"]["dataset"]["enum"] and "labset" not in data.SOURCES
    params = params_file(tmp_path, "labset", plugins=["lab_data"])
    assert_tiny_prepared(fetch_and_prepare(capsys, params, "labset"), params, "labset")
    assert data.describe("labset").module == "lab_data" and "labset" in transfer_enum(load_schema())


def test_a_plugin_module_without_datasets_is_not_imported_by_the_dataset_registry(tmp_path, monkeypatch, fresh):
    """A plugin that registers only methods imports torch: the data registry reads its source and
    leaves it alone (the method registry reads it without importing it either)."""
    (tmp_path / "methods_only.py").write_text('raise RuntimeError("imported")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    params = yaml.safe_load(PARAMS_YAML.read_text())
    params["plugins"] = ["methods_only"]
    before = dict(data.SOURCES)
    validate(params)
    assert "methods_only" not in sys.modules and data.SOURCES == before


def test_a_sharded_plugin_dataset_is_no_transfer_target(tmp_path, monkeypatch, fresh):
    shard = ('SHARDED = True\n\n\ndef prepare_into(raw_dir, out_dir):\n    return {"train": 0, "test": 0}\n\n\n'
             'DATASETS = {"bigset": sys.modules[__name__]}\n')
    monkeypatch.syspath_prepend(str(write_module(tmp_path, "big_data", "bigset", lambda s: s.split("DATASETS =")[0] + shard)))
    schema = load_schema(["big_data"])
    assert "bigset" in schema["properties"]["dataset"]["enum"] and "bigset" not in transfer_enum(schema)
    assert data.describe("bigset", datasets.with_plugins(["big_data"])["bigset"]).sharded


# --- mistakes: one clear error each -------------------------------------------------------------------------
def test_an_unknown_dataset_is_one_clear_error(tmp_path, capsys):
    params = params_file(tmp_path, "fashion_mnist")
    rc, _, err = cli(capsys, "--params", params, "data", "fetch", "nosuch")
    assert rc == 2 and err.startswith("clusterssl: error: unknown dataset 'nosuch'; choose one of: ") and "digits" in err
    assert "Traceback" not in err and err.count("\n") == 1
    rc, _, err = cli(capsys, "--params", params, "data", "prepare", "../outside")
    assert rc == 2 and "'../outside' is not a dataset name" in err
    rc, _, err = cli(capsys, "--params", params_file(tmp_path, "nosuch"), "data", "fetch")
    assert rc == 2 and "invalid value for key 'dataset'" in err and "'nosuch' is not one of" in err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("SHAPE = (8, 8, 1)\n", ""), "does not declare SHAPE"),
    (lambda s: s.replace("SHAPE = (8, 8, 1)", "SHAPE = (8, 8)"), "does not declare SHAPE"),
    (lambda s: s.replace('CLASSES = ("dark", "light")\n', ""), "does not declare CLASSES"),
    (lambda s: s.replace("def load_raw(", "def read_raw("), "does not declare load_raw"),
    (lambda s: s.replace('{"tinyset": sys.modules[__name__]}', '{"Tiny-Set": sys.modules[__name__]}'), "lowercase letters"),
    (lambda s: s.replace('{"tinyset": sys.modules[__name__]}', '{"digits": sys.modules[__name__]}'), "'digits' is registered twice"),
    (lambda s: s.replace('{"tinyset": sys.modules[__name__]}', '["tinyset"]'), "DATASETS must be a dict"),
])
def test_a_dataset_module_that_declares_its_facts_wrongly_is_one_clear_error(tmp_path, monkeypatch, fresh, edit, message):
    monkeypatch.syspath_prepend(str(write_module(tmp_path, "bad_data", "tinyset", edit)))
    with pytest.raises(UserError, match=message):
        datasets.with_plugins(["bad_data"])
    before = dict(data.SOURCES)
    with pytest.raises(UserError, match=message):
        data.use_plugins(["bad_data"])
    assert data.SOURCES == before  # nothing half-registered


def test_a_plugin_module_that_cannot_be_found_is_one_clear_error(tmp_path, fresh, capsys):
    params = params_file(tmp_path, "fashion_mnist", plugins=["no_such_dataset_module"])
    rc, _, err = cli(capsys, "--params", params, "data", "fetch", "digits")
    assert rc == 2 and "no_such_dataset_module" in err and "PYTHONPATH" in err and "Traceback" not in err


def test_prepare_refuses_images_that_are_not_the_declared_shape(tmp_path, monkeypatch, fresh):
    monkeypatch.syspath_prepend(str(write_module(tmp_path / "lab", "rgb_data", "rgbset", lambda s: s.replace("(8, 8, 1)", "(8, 8, 3)"))))
    data.use_plugins(["rgb_data"])
    data.fetch("rgbset", tmp_path / "raw")
    with pytest.raises(UserError, match=r"rgbset: its train images are 8 x 8 x 1, but its module \(rgb_data\) declares SHAPE 8 x 8 x 3"):
        data.prepare("rgbset", tmp_path / "raw", tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()
