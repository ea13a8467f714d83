"""Params as they are composed: presets merged onto params.yaml, each method's block completed
from the defaults its file declares, recipes taken back with null, and the values DVC writes."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from clusterssl import registry
from clusterssl.data import imagenet
from clusterssl.cli import main
from clusterssl.config import hydra_value, load_params, merge, validate
from clusterssl.io import UserError
from conftest import BIN, ENV, PARAMS_YAML


def test_merge_goes_down_sections_and_replaces_lists_and_values():
    base = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 1}
    assert merge(base, {"a": {"c": [3], "d": {"g": 2}}, "f": None}) == {"a": {"b": 1, "c": [3], "d": {"e": 1, "g": 2}}, "f": None}
    assert base == {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 1}  # untouched


def test_a_preset_is_merged_onto_params_yaml_in_the_order_given(tmp_path):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("pretrain: {epochs: 3}\nmethods: [simclr]\n")
    second.write_text("pretrain: {epochs: 4}\n")
    default = load_params()
    assert load_params(PARAMS_YAML, first)["pretrain"] == {**default["pretrain"], "epochs": 3}
    stacked = load_params(PARAMS_YAML, first, second)
    assert stacked["pretrain"]["epochs"] == 4 and stacked["methods"] == ["simclr"]
    with pytest.raises(UserError, match="first.yaml: invalid value for key 'dataset'"):  # alone, a preset is incomplete
        load_params(first)


def test_a_method_block_names_only_what_it_changes_and_null_takes_a_recipe_back():
    params = yaml.safe_load(PARAMS_YAML.read_text())
    params["method_params"] = {"carl": {"num_prototypes": 50}, "coke": {"pretrain": None}, "swav": {"pretrain": {"lr": 0.9}}}
    done = validate(params)
    for name, spec in registry.methods().items():  # every registered method has its block
        assert set(spec.defaults) <= set(done["method_params"][name])
    assert done["method_params"]["carl"] == {**registry.method("carl").defaults, "num_prototypes": 50}
    assert "pretrain" not in done["method_params"]["coke"] and done["method_params"]["swav"]["pretrain"] == {"lr": 0.9}
    params = yaml.safe_load(PARAMS_YAML.read_text())
    params["method_params"]["nosuch"] = {}
    with pytest.raises(UserError, match="'method_params.nosuch'"):
        validate(params)


def test_the_cli_merges_presets_onto_its_params_file(tmp_path, capsys):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"paths": {"data": str(tmp_path / "d"), "results": str(tmp_path / "r")}, "pretrain": {"lr": 0}}))
    assert main(["--params", str(PARAMS_YAML), "--preset", str(preset), "data", "fetch", "digits"]) == 2
    err = capsys.readouterr().err
    assert "p.yaml" in err and "'pretrain.lr'" in err and not (tmp_path / "d").exists()


def test_scientific_notation_is_a_number_as_dvc_writes_it(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(PARAMS_YAML.read_text().replace("weight_decay: 0.0005\n", "weight_decay: 5e-04\n", 1))
    assert load_params(f)["pretrain"]["weight_decay"] == 5e-4


@pytest.mark.parametrize("value, text", [
    (None, "null"), (True, "true"), (3, "3"), (0.5, "0.5"), (1e-05, "1.0e-05"), (2.5e-07, "2.5e-07"),
    ("digits", '"digits"'), ('a "b" c\\d', '"a \\"b\\" c\\\\d"'), ([None, 20], "[null,20]"), ({}, "{}"),
])
def test_values_in_dvcs_override_grammar(value, text):
    assert hydra_value(value) == text


def test_exp_args_refuses_a_preset_that_does_not_validate(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain: {epochs: ten}\n")
    assert main(["--params", str(PARAMS_YAML), "exp-args", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "'pretrain.epochs'" in err



@pytest.mark.parametrize("key, url", [("data", "pipe:touch PWNED;cat"), ("results", "s3://bucket/x")])
def test_a_url_in_paths_is_refused_before_anything_runs(tmp_path, key, url):
    """WebDataset would open a `pipe:` data folder as a shell command: every verb refuses a path
    that starts like a URL, in one line naming the key, and nothing runs."""
    from test_imagenet import make_imagefolder

    make_imagefolder(tmp_path / "imagenet", per_class=(1, 1))  # what `data prepare imagenet100` would shard
    params = yaml.safe_load(PARAMS_YAML.read_text())
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results"), key: url}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**ENV, imagenet.DIR_ENV: str(tmp_path / "imagenet")}
    for verb in ("fetch", "prepare"):
        run = subprocess.run([BIN / "clusterssl", "--params", "params.yaml", "data", verb, "imagenet100"],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.count("\n") == 1 and f"'paths.{key}'" in run.stderr and "local folders" in run.stderr, run.stderr
    assert not list(tmp_path.rglob("PWNED")), "a path was run as a shell command"


@pytest.mark.parametrize("folder", ["my results", "/tmp/a b/$HOME/r$(touch PWNED)", "./data:v2", "data/pipe:x", "~/data", "2024:runs"])
def test_a_local_folder_passes_whatever_its_characters(folder):
    params = yaml.safe_load(PARAMS_YAML.read_text())
    params["paths"] = {"data": folder, "results": folder}
    assert validate(params)["paths"] == {"data": folder, "results": folder}
