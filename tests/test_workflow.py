"""The orchestration layer: dvc.yaml and the Snakemake DAG describe the same stages, and the
whole DAG runs end to end on the `tiny` preset under Snakemake (under DVC: tests/test_dvc.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clusterssl import paths
from clusterssl.paths import report_files
from clusterssl.stages import STAGE_PARAMS
from conftest import (BIN, ENV, ROOT, TINY_OVERRIDE, TINY_RESULTS, metrics_of, needs_fashion_mnist, preset_in, preset_params,
                      run_params_file, snakemake, tiny_params)


def normalise(cmd: str) -> str:
    """A verb invocation without the options that only one orchestrator passes."""
    cmd = re.sub(r"\s*>\s*\S+\s+2>&1", "", cmd)
    cmd = re.sub(r"--(params|threads|reference) \S+", "", cmd)
    cmd = cmd.replace("--no-progress", "")
    return " ".join(cmd.split())


def snakemake_jobs(workdir: Path, configfile: Path, *extra: str) -> list[dict]:
    """Jobs of a dry run: rule, outputs and shell command of each."""
    out = snakemake(workdir, configfile, "-n", "-p", "--cores", "2", *extra).stdout
    jobs, job = [], None
    for line in out.splitlines():
        if m := re.match(r"^(local)?rule (\w+):", line):
            job = {"rule": m.group(2), "output": [], "cmd": None}
            jobs.append(job)
        elif job is not None and (m := re.match(r"^\s+output: (.*)", line)):
            job["output"] = [o.strip() for o in m.group(1).split(",")]
        elif job is not None and line.startswith("Shell command: "):
            cmd = line[len("Shell command: "):].strip()
            job["cmd"] = None if cmd == "None" else cmd
    return jobs


def test_dvc_stages_match_snakemake_dag(tmp_path):
    from dvc.repo import Repo

    # both in a copy of the project's files, so the Snakefile's merged config lands in tmp_path
    for f in ["dvc.yaml", "params.yaml"]:
        shutil.copy(ROOT / f, tmp_path / f)
    snake = {
        (normalise(j["cmd"]), frozenset(j["output"]))
        for j in snakemake_jobs(tmp_path, tmp_path / "params.yaml", "--forceall")
        if j["cmd"]
    }
    subprocess.run([BIN / "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env={**ENV, "DVC_NO_ANALYTICS": "1"})
    repo = Repo(str(tmp_path))
    dvc = set()
    for stage in repo.index.stages:
        # the live training curves are a DVC output only: a run writes them beside its outputs
        # (paths.live_dir), and Snakemake, which never reads them, does not declare them
        outs = [Path(o.def_path) for o in stage.outs]
        dvc.add((normalise(stage.cmd), frozenset(str(p) for p in outs if not p.is_relative_to("results/live"))))
        # each DVC stage lists exactly the params keys its verb reads
        kind = stage.name.split("@")[0]
        words = stage.cmd.split()
        verb = words[1] if words[1] != "eval" else words[2]
        method = words[words.index("--method") + 1] if "--method" in words else None
        key = {"data": words[2] if words[1] == "data" else None}.get(verb, verb)
        expected = {k.format(method=method) for k in STAGE_PARAMS[key]}
        listed = {p for dep in stage.deps if hasattr(dep, "params") for p in dep.params}
        assert listed == expected, f"dvc.yaml stage {stage.addressing} ({kind}) lists {sorted(listed)}, the verb reads {sorted(expected)}"
    assert snake == dvc, f"only in Snakemake: {snake - dvc}\nonly in DVC: {dvc - snake}"


def test_methods_all_puts_every_method_in_the_dag(tmp_path):
    from clusterssl.paths import all_methods, evals

    ALL_METHODS = all_methods()

    jobs = snakemake_jobs(tmp_path, preset_in(tmp_path, methods="all"))
    trained = sorted(re.search(r"--method (\S+)", j["cmd"]).group(1) for j in jobs if j["rule"] == "pretrain")
    assert trained == sorted(ALL_METHODS)
    evaluated = [j for j in jobs if j["rule"] == "evaluate"]
    assert len(evaluated) == len(evals()) * (len(ALL_METHODS) + 1)  # every protocol on frozen features, every method and raw pixels


def test_jobs_read_the_merged_config_a_partial_preset_and_config_overrides(tmp_path):
    """A preset without some sections, plus --config overrides: the file every job reads is the
    complete, validated config Snakemake scheduled from (typed: seeds are ints, not strings)."""
    from clusterssl.config import fingerprint, load_params, snakemake_config

    preset = preset_params("tiny")
    preset["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    del preset["report"], preset["eval"]["cluster"]
    (tmp_path / "partial.yaml").write_text(yaml.safe_dump(preset))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")  # the Snakefile's base config, in the workdir
    jobs = snakemake_jobs(tmp_path, tmp_path / "partial.yaml", "--config", "seeds=[0,1]", "eval={semisup: {steps: 7}}")
    files = {re.search(r"--params (\S+)", j["cmd"]).group(1) for j in jobs if j["cmd"]}
    assert len(files) == 1  # one file for the whole DAG, in the preset's results folder, named by the config
    merged = Path(files.pop())
    assert merged.parent == tmp_path / "results/params" and merged.exists()
    params = load_params(merged)
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["seeds"] == [0, 1] and params["eval"]["semisup"]["steps"] == 7
    assert params["report"] == default["report"] and params["eval"]["cluster"] == default["eval"]["cluster"]
    assert params["dataset"] == "digits" and params["eval"]["linear"] == preset["eval"]["linear"]
    assert sum(j["rule"] == "pretrain" for j in jobs) == 4  # two methods x two seeds
    # `clusterssl dvc-adopt --config` reads the same values into the same config, so finds this file
    given = load_params(tmp_path / "params.yaml", tmp_path / "partial.yaml", config=snakemake_config(["seeds=[0,1]", "eval={semisup: {steps: 7}}"]))
    assert merged.stem == fingerprint(given)


def test_fmnist_all_preset_is_the_default_with_every_method_at_twice_its_epochs():
    from clusterssl.config import load_params

    default, every = load_params(ROOT / "params.yaml"), load_params(ROOT / "params.yaml", ROOT / "config/presets/fmnist-all.yaml")
    assert every.pop("methods") == "all"  # every registered method
    default.pop("methods")
    assert every.pop("paths")["results"] != default.pop("paths")["results"]
    # twice the default's epochs (studies/budget); the default keeps its 30-minute bound
    assert every["pretrain"].pop("epochs") == 2 * default["pretrain"].pop("epochs")
    assert every == default, "fmnist-all must give each method the default preset's settings and recipe"


@pytest.mark.e2e
def test_every_method_through_every_stage(tmp_path, monkeypatch, capsys):
    """Each registered method through pretrain -> embed -> every evaluation -> report (the
    verbs in-process, on the tiny preset; Snakemake runs the same verbs in the test below)."""
    from clusterssl.cli import main
    from clusterssl.paths import RAW_PIXELS, SCRATCH, all_methods, evals

    ALL_METHODS = all_methods()

    monkeypatch.chdir(tmp_path)
    # one epoch: CADC places its centres on the untrained backbone, as in the paper; transfer
    # (which needs a second dataset) runs in the Snakemake and DVC tests below
    params = preset_in(tmp_path, methods="all", pretrain__epochs=1, method_params__cadc__kmeans_epoch=0,
                       eval__semisup__fractions=[0.1], eval__transfer__datasets=[])
    run = lambda *argv: main(["--params", str(params), *argv])
    assert run("data", "fetch", "digits") == 0 and run("data", "prepare", "digits") == 0
    assert run("data", "split", "--fraction", "0.1") == 0
    assert run("eval", "semisup", "--fraction", "0.1", "--method", SCRATCH) == 0
    for method in [RAW_PIXELS, *ALL_METHODS]:
        if method != RAW_PIXELS:
            assert run("pretrain", "--method", method, "--no-progress") == 0, method
        assert run("embed", "--method", method) == 0, method
        for protocol in evals():
            assert run("eval", protocol, "--method", method) == 0, (method, protocol)
        # every method's evaluation encoder (EMA teachers included) fine-tunes
        assert run("eval", "semisup", "--fraction", "0.1", "--method", method) == 0, method
    assert run("report", "--reference", str(ROOT / "reference/reported_numbers.csv")) == 0
    capsys.readouterr()
    table = pd.read_csv(tmp_path / "results/report/tables/main.csv").set_index("method")
    assert list(table.index) == [RAW_PIXELS, SCRATCH, *ALL_METHODS]
    assert table["semisup_0.1_top1_mean"].notna().all()
    table = table.drop(SCRATCH)  # the from-scratch row has only semi-supervised numbers
    assert table["linear_top1_mean"].notna().all() and table["kmeans_nmi_mean"].notna().all()
    with_head = {"carl", "cc", "cadc", "coke"}
    assert set(table.index[table["head_nmi_mean"].notna()]) == with_head
    assert (table.loc[["cc", "cadc", "coke"], "head_clusters_mean"] <= 10).all()
    index = (tmp_path / "results/report/index.md").read_text()
    assert "CueCo-style" in index and all(f"| {m} | 1 |" in index for m in ALL_METHODS)  # the methods table: a row each
    # prototype use is logged for the methods with prototypes, and only for them
    logged = {m for m in ALL_METHODS if "prototypes_used" in pd.read_csv(tmp_path / f"results/runs/digits/{m}/seed0/history.csv")}
    assert logged == {"carl", "swav", "coke"}


@pytest.mark.e2e
@needs_fashion_mnist
def test_snakemake_tiny_end_to_end(tiny_local_run):
    """The tiny preset with a --config override (one method): every job reads the config
    Snakemake validated, so the report has exactly the rows the DAG scheduled. It ran from a
    checkout whose path has a space, into a results folder named with a space and `$(touch PWNED)`:
    every job took them as names and ran nothing else."""
    workdir = tiny_local_run
    report = workdir / "results" / "report"
    params = yaml.safe_load(run_params_file(workdir).read_text())
    assert " " in str(workdir) and params["paths"]["results"] == str(workdir / TINY_RESULTS)
    assert not list(workdir.parent.rglob("PWNED")), "a job ran a command from a path"
    for f in report_files(params):
        assert f.stat().st_size > 0, f
    table = pd.read_csv(report / "tables/main.csv").set_index("method")
    assert list(table.index) == ["raw_pixels", "scratch", "carl"]
    assert params["methods"] == ["carl"]
    encoders = table.drop("scratch")
    for col in ["linear_top1_mean", "knn200_top1_mean", "knn20_top1_mean", "transfer_fashion_mnist_linear_top1_mean",
                "transfer_fashion_mnist_knn20_top1_mean"]:
        assert encoders[col].between(0, 100).all(), col
    for col in ["semisup_0.01_top1_mean", "semisup_0.1_top1_mean"]:
        assert table[col].between(0, 100).all(), col
    # raw pixels on digits are easy: the probe must learn something real
    assert table.loc["raw_pixels", "linear_top1_mean"] > 80
    assert not list(workdir.rglob("*.tmp")), "temporary files left behind"
    # the pretraining table names each method's optimizer, crops and the keys its own recipe sets
    index = (report / "index.md").read_text()
    assert re.search(r"\| carl \| 2 \| 128 \| sgd \| 0\.3 \| 0\.0005 \| \[0\.3, 1\.0\] \| shared \|", index), index
    # every row fine-tuned on the same labelled images
    metrics = workdir / "results/metrics/digits"
    subsets = {json.loads((metrics / m / "seed0/semisup_0.1.json").read_text())["subset_sha256"] for m in table.index}
    assert len(subsets) == 1

    # changing pretrain.epochs re-runs pretraining and everything downstream, nothing upstream
    changed = tiny_params(workdir, name="params.epochs3.yaml", pretrain__epochs=3)
    jobs = [j for j in snakemake_jobs(workdir, changed, *TINY_OVERRIDE) if j["cmd"]]
    assert {j["rule"] for j in jobs} == {"pretrain", "embed", "evaluate", "transfer", "semisup", "report"}
    assert not any("raw_pixels" in j["cmd"] or "scratch" in j["cmd"] for j in jobs), "baselines do not depend on pretraining"
    # that other config got a file of its own: the run's jobs would still read epochs 2, not 3
    assert yaml.safe_load(run_params_file(workdir).read_text()) == params
    assert len(list((workdir / "results/params").glob("*.yaml"))) == 2

    # another preset (its own results folder) shares data/: it fetches, prepares and splits nothing again
    other = preset_in(workdir, name="params.other.yaml", paths__results=str(workdir / "results-other"))
    jobs = [j for j in snakemake_jobs(workdir, other, *TINY_OVERRIDE) if j["cmd"]]
    assert "pretrain" in {j["rule"] for j in jobs} and not {j["rule"] for j in jobs} & {"fetch", "prepare", "split"}


def test_a_results_folder_named_with_a_command_substitution_runs_no_command(tmp_path):
    """The rules quote every value they put into a shell command: `r$(touch PWNED)` from params
    is a folder name, and the job that logs there runs nothing else."""
    params = preset_in(tmp_path, paths={"data": "data", "results": "r$(touch PWNED)"})
    snakemake(tmp_path, params, "--cores", "1", "-q", "--", "data/raw/digits")
    assert (tmp_path / "data/raw/digits").is_dir() and (tmp_path / "r$(touch PWNED)/logs/fetch/digits.log").is_file()
    assert not list(tmp_path.rglob("PWNED")), "a job ran a command from a path"


@pytest.mark.e2e
@needs_fashion_mnist
def test_snakemake_html_report_holds_every_table_and_figure_with_its_caption(tiny_local_run):
    workdir = tiny_local_run
    html = workdir / "results" / "report.html"
    snakemake(workdir, workdir / "params.yaml", *TINY_OVERRIDE, "--report", str(html))
    text = html.read_text()
    params = yaml.safe_load(run_params_file(workdir).read_text())
    items = [f for f in report_files(params) if f.suffix in (".csv", ".png")]
    assert sum(f.suffix == ".png" for f in items) == len(paths.report_figures()) >= 6 and sum(f.suffix == ".csv" for f in items) == 8
    for f in items:
        # each file is embedded as an entry keyed by its path, with its caption (a table's .rst, a figure's declaration)
        entry = text.find(f'"{f}": {{"name": "{f.name}"')
        assert entry >= 0, f"{f.name} is not in the HTML report"
        first_line = (paths.report_figures()[f.stem]["caption"] if f.suffix == ".png"  # declared with the figure
                      else (ROOT / "workflow/report" / f"{f.stem}.rst").read_text().splitlines()[0])
        words = first_line.encode("ascii", "ignore").decode()[:60]  # JSON may escape what is not ASCII
        assert f'"caption": "<p>{words}' in text[entry : entry + 4000], f"{f.name}: caption not found"


def _pretrain_process(snakemake_proc: subprocess.Popen, resume: Path, epoch: int):
    """The `clusterssl pretrain` job under a running Snakemake, once its resume.pt holds `epoch`."""
    import psutil
    import torch

    while not resume.exists() or torch.load(resume, weights_only=True)["epoch"] < epoch:
        assert snakemake_proc.poll() is None, "the workflow ended before its pretraining job could be stopped"
        time.sleep(0.01)
    children = psutil.Process(snakemake_proc.pid).children(recursive=True)
    return next(c for c in children if "pretrain" in c.cmdline())


@pytest.mark.e2e
@needs_fashion_mnist
def test_snakemake_rerun_after_a_preempted_job_or_a_killed_workflow_redoes_only_what_is_missing(tmp_path, tiny_local_run):
    """A pretraining job preempted (SIGTERM) fails the workflow; then Snakemake itself is killed
    (SIGKILL, with its jobs) mid-run. Each re-run redoes only the missing outputs, pretraining
    resumes from its resume.pt, no job ever reads a half-written file, and the end result equals
    an uninterrupted run's."""
    params = preset_in(tmp_path)
    cmd = [BIN / "snakemake", "-s", ROOT / "Snakefile", "-d", tmp_path, "--configfile", params, *TINY_OVERRIDE, "--cores", "2"]
    run = tmp_path / "results/runs/digits/carl/seed0"
    log = tmp_path / "results/logs/pretrain/carl_seed0.log"

    # 1. the pretraining job is preempted after its first epoch: the workflow fails
    workflow = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    _pretrain_process(workflow, run / "resume.pt", 1).send_signal(signal.SIGTERM)
    out, _ = workflow.communicate(timeout=600)
    assert workflow.returncode != 0 and "Error in rule pretrain" in out, out[-3000:]
    assert "stopped by SIGTERM at epoch 2" in log.read_text()
    assert not (run / "checkpoint.pt").exists() and not (tmp_path / "results/metrics/digits/carl").exists()
    done = {f: f.stat().st_mtime_ns for f in tmp_path.rglob("*")
            if f.is_file() and not {"logs", ".snakemake", "live"} & set(f.parts) and f.parent != run}  # live: the run's curves
    assert any("prepared" in f.parts for f in done)

    # 2. the re-run resumes pretraining at the step it stopped; Snakemake is killed mid-run
    workflow = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True)
    deadline = time.time() + 300
    while "resuming" not in (log.read_text() if log.exists() else ""):
        assert workflow.poll() is None and time.time() < deadline, workflow.communicate()[0][-3000:]
        time.sleep(0.01)
    assert "at epoch 2, step" in log.read_text()
    os.killpg(workflow.pid, signal.SIGKILL)
    workflow.communicate(timeout=60)

    # 3. what a user then types: unlock, re-run the incomplete jobs (both profiles set rerun-incomplete)
    snakemake(tmp_path, params, *TINY_OVERRIDE, "--unlock")
    snakemake(tmp_path, params, *TINY_OVERRIDE, "--cores", "2", "--rerun-incomplete")
    assert "resuming" in log.read_text()
    assert {f: f.stat().st_mtime_ns for f in done} == done, "outputs that were complete were redone"
    assert not list(tmp_path.rglob(".*.tmp")), "temporary files left behind"
    assert metrics_of(tmp_path) == metrics_of(tiny_local_run)
    assert "Nothing to be done" in snakemake(tmp_path, params, *TINY_OVERRIDE, "--cores", "2", "-n").stdout


def test_conda_environments_install_what_pyproject_lists():
    """environment.yml and the rules' env install the project itself with pip, so their packages
    are pyproject.toml's by construction; only Python comes from conda, at a version it allows."""
    import tomllib

    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for f, install in [(ROOT / "environment.yml", "-e .[dev]"), (ROOT / "workflow/envs/clusterssl.yaml", "-e ../..")]:
        env = yaml.safe_load(f.read_text())
        conda = [d for d in env["dependencies"] if isinstance(d, str)]
        pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
        assert sorted(conda) == ["pip", "python=3.11"] and pip == [[install]], f
        # the path resolves to this project from the file's folder (conda runs pip there)
        assert (f.parent / install.split()[1].split("[")[0] / "pyproject.toml").resolve() == ROOT / "pyproject.toml", f
    assert "3.11" in SpecifierSet(project["requires-python"])
    assert any(d.startswith("snakemake-executor-plugin-slurm") for d in project["dependencies"])


def test_snakemake_lint_is_clean(tmp_path):
    """`snakemake --lint` finds nothing to say about the workflow (rules, profiles' resources, logs)."""
    run = snakemake(tmp_path, preset_in(tmp_path), "--lint")
    assert "Congratulations, your workflow is in a good condition!" in run.stdout + run.stderr, run.stdout + run.stderr


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "config/presets").glob("*.yaml")))
def test_dvc_exp_args_turn_params_yaml_into_the_preset(tmp_path, preset):
    """`clusterssl exp-args PRESET | xargs dvc exp run` sets, through DVC's own override code,
    exactly the values of the preset merged onto params.yaml: DVC runs any preset with no file
    copied by hand."""
    import shlex

    from dvc.utils.hydra import apply_overrides

    from clusterssl.config import load_params
    from clusterssl.paths import methods

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    args = subprocess.run([BIN / "clusterssl", "exp-args", ROOT / f"config/presets/{preset}.yaml"], cwd=ROOT,
                          capture_output=True, text=True, check=True, env=ENV).stdout
    words = shlex.split(args)  # as xargs splits them
    assert words[::2] == ["-S"] * (len(words) // 2)
    apply_overrides(tmp_path / "params.yaml", words[1::2])
    expected = load_params(ROOT / "params.yaml", ROOT / f"config/presets/{preset}.yaml")
    expected["methods"] = methods(expected)  # `methods: all` is written out: DVC's matrix needs the list
    assert load_params(tmp_path / "params.yaml") == expected


def test_dvc_yaml_is_generated_from_the_stages_and_paths():
    """dvc.yaml is what `clusterssl dvc-yaml` writes (the stages' params keys and the output
    paths, declared once in the package): regenerate it after adding a stage."""
    from clusterssl.dvcgen import render

    assert (ROOT / "dvc.yaml").read_text() == render(), "dvc.yaml is out of date: run `clusterssl dvc-yaml`"
