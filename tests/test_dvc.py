"""DVC as its users use it, on the tiny preset: a preset and a changed key as `dvc exp run`
experiments (only the stages that read the key re-run), a run pushed to a remote and pulled into a
fresh clone (`dvc repro` then runs nothing), a Snakemake run handed over to DVC
(`clusterssl dvc-adopt`), and the live training curves dvclive writes while a run trains.

One DVC run of the tiny preset (`tiny_dvc_repo`, session-wide) serves the DVC tests; a test that
changes its workspace works on a copy."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clusterssl import data, live, paths, train
from clusterssl.config import validate
from clusterssl.io import file_sha256
from conftest import BIN, ENV, ROOT, needs_fashion_mnist, preset_params, read_curves

GIT_ENV = {**ENV, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
TINY_RESULTS = "results/tiny"  # the tiny preset's paths.results, relative to a repository's root


# --- live training curves ----------------------------------------------------------------------------
@pytest.fixture
def tiny_digits(tmp_path) -> dict:
    """The tiny preset on 256 digits, batch 64: four steps an epoch, data prepared in tmp_path."""
    params = preset_params("tiny")
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    params["data"]["max_train"] = 256
    params["pretrain"].update(epochs=2, batch_size=64)
    validate(params)
    data.fetch("digits", paths.raw_dir(params, "digits"))
    data.prepare("digits", paths.raw_dir(params, "digits"), paths.prepared_dir(params, "digits"))
    return params


def logged_columns(history: pd.DataFrame) -> list[str]:
    return [c for c in history.columns if c not in live.NOT_LOGGED]


def assert_curves_match_history(folder: Path, history: pd.DataFrame) -> None:
    curves = read_curves(folder)
    assert sorted(curves) == sorted(logged_columns(history))
    for name, rows in curves.items():
        assert list(rows["step"]) == list(history["epoch"]), name
        assert rows[name].tolist() == pytest.approx(history[name].tolist(), rel=1e-12), name


def wait_for_summary_step(summary: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Polls dvclive's summary until it records `step`: it is written after every curve of that step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before its live summary showed epoch {step}: {proc.communicate()}"
        try:
            if json.loads(summary.read_text()).get("step") == step:
                return
        except (OSError, ValueError):  # not written yet, or mid-write
            pass
        time.sleep(0.02)
    pytest.fail(f"{summary} did not reach step {step} in {timeout} s")


@pytest.mark.e2e
def test_live_curves_hold_each_epoch_while_the_run_trains(tiny_digits, tmp_path):
    """Another process reads the curves of a run that is still training: after epoch 1, every loss
    term, the learning rate, the monitor and prototype use have exactly epoch 1's row; at the end,
    one row per epoch, equal to history.csv."""
    tiny_digits["pretrain"]["epochs"] = 4
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_digits))
    folder = paths.live_dir(tiny_digits, "carl", 0)
    proc = subprocess.Popen([BIN / "clusterssl", "--params", params_file, "pretrain", "--method", "carl", "--seed", "0",
                             "--threads", "1", "--no-progress"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_summary_step(folder / live.SUMMARY, 1, proc)
        proc.send_signal(signal.SIGSTOP)  # the run holds still while this process reads
        try:
            mid_run = read_curves(folder)
            assert proc.poll() is None and not (paths.run_dir(tiny_digits, "carl", 0) / "checkpoint.pt").exists()
        finally:
            proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-3000:]
    history = pd.read_csv(paths.run_dir(tiny_digits, "carl", 0) / "history.csv")
    assert {"loss", "lr", "online_knn20_top1", "prototypes_used"} <= set(mid_run) == set(logged_columns(history))
    assert all(list(rows["step"]) == [1] for rows in mid_run.values()), mid_run
    assert_curves_match_history(folder, history)
    assert b"warning" not in err


def test_a_live_log_that_cannot_be_written_leaves_training_as_it_was(tiny_digits, tmp_path, monkeypatch, capsys):
    """The live folder is a file (as root, no permission bit stops a write): the run warns once
    and trains on, to the same checkpoint.pt byte for byte and the same history. A run whose log
    works writes nothing outside its folder: no `dvc init`, no dvc.yaml, no Git change."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)  # a Git repository without DVC, where dvclive would otherwise `dvc init`
    logged = train.pretrain(tiny_digits, "carl", 0, threads=1, progress=False)
    assert "warning" not in capsys.readouterr().err
    history = pd.read_csv(logged / "history.csv")
    assert_curves_match_history(paths.live_dir(tiny_digits, "carl", 0), history)
    assert not (tmp_path / ".dvc").exists() and not list(tmp_path.rglob("dvc.yaml")) and not list(tmp_path.rglob("report.*"))

    broken = dict(tiny_digits, paths={**tiny_digits["paths"], "results": str(tmp_path / "broken")})
    blocker = paths.live_dir(broken, "carl", 0)
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    unlogged = train.pretrain(broken, "carl", 0, threads=1, progress=False)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and str(blocker) in err and "training goes on" in err, err
    assert file_sha256(unlogged / "checkpoint.pt") == file_sha256(logged / "checkpoint.pt")
    timings = list(live.NOT_LOGGED[1:])
    pd.testing.assert_frame_equal(pd.read_csv(unlogged / "history.csv").drop(columns=timings), history.drop(columns=timings))
    assert blocker.read_text() == "not a folder"


# --- DVC repositories ----------------------------------------------------------------------------------
def run_in(repo: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    """A command (dvc, git, clusterssl, ...) in `repo`, with this interpreter's tools first on PATH."""
    done = subprocess.run([str(a) for a in args], cwd=repo, env=GIT_ENV, capture_output=True, text=True, check=False)
    if check and done.returncode:
        pytest.fail(f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def dvc(repo: Path, *args) -> str:
    return run_in(repo, BIN / "dvc", *args).stdout


def stages_run(output: str) -> set[str]:
    """The stages (matrix entries merged: `pretrain@carl-0` is `pretrain`) a `dvc repro` or `dvc exp run` ran."""
    return set(re.findall(r"Running stage '([^'@]+)", output))


def new_repo(repo: Path) -> Path:
    """A Git + DVC repository holding what the DVC workflow reads from a checkout, with the
    project's DVC settings (its default remote among them), committed."""
    repo.mkdir(parents=True)
    for f in ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "reference/reported_numbers.csv", "config/presets/tiny.yaml"]:
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, repo / f)
    # one method keeps the runs short; a preset of its own, as a user adds one
    (repo / "config/presets/one-method.yaml").write_text("methods: [carl]\n")
    run_in(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")
    run_in(repo, "git", "add", "-A")
    run_in(repo, "git", "commit", "-qm", "the workflow")
    return repo


PRESETS = ("config/presets/tiny.yaml", "config/presets/one-method.yaml")


@pytest.fixture(scope="session")
def tiny_dvc_repo(tmp_path_factory) -> dict:
    """The tiny preset (CARL only) run once as DVC's experiment `tiny`, from the default params.yaml
    and the presets' values as `dvc exp run -S` arguments (`clusterssl exp-args`), no file
    copied: {"repo": its folder, "output": what `dvc exp run` printed}. Queued experiments may be
    added to it; a test that changes its workspace copies it (`copy_repo`)."""
    repo = new_repo(tmp_path_factory.mktemp("tiny_dvc") / "origin")
    done = run_in(repo, "sh", "-c", f"clusterssl exp-args {' '.join(PRESETS)} | xargs dvc exp run --name tiny")
    return {"repo": repo, "output": done.stdout}


def queued_run(repo: Path, name: str, timeout: float = 1800) -> str:
    """Starts DVC's queue (one worker) and waits for the queued experiment `name` to end; what it printed."""
    dvc(repo, "queue", "start", "-j", "1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = next((line.split() for line in dvc(repo, "queue", "status").splitlines() if line.split()[1:2] == [name]), None)
        if row and row[-1] in ("Success", "Failed"):
            log = dvc(repo, "queue", "logs", name)
            assert row[-1] == "Success", log[-3000:]
            return log
        time.sleep(2)
    pytest.fail(f"the queued experiment {name} did not end in {timeout} s: {dvc(repo, 'queue', 'status')}")


def copy_repo(source: Path, dest: Path) -> Path:
    """A copy of a repository without DVC's scratch folder (.dvc/tmp: its queue's and index's state)."""
    scratch = source / ".dvc"
    shutil.copytree(source, dest, symlinks=True, ignore=lambda folder, names: ["tmp"] if Path(folder) == scratch else [])
    return dest


def report_bytes(repo: Path) -> dict[str, bytes]:
    report = repo / TINY_RESULTS / "report"
    return {str(f.relative_to(report)): f.read_bytes() for f in sorted(report.rglob("*")) if f.is_file()}


def exp_metrics(repo: Path) -> dict[str, dict]:
    """{experiment name: {"params": params.yaml's values, "metrics": the report's metrics.json}} from `dvc exp show --json`."""
    out = {}
    for commit in json.loads(dvc(repo, "exp", "show", "--json")):
        for exp in commit.get("experiments") or []:
            data_ = exp["revs"][0]["data"]
            out[exp["name"]] = {"params": data_["params"]["params.yaml"]["data"],
                                "metrics": data_["metrics"][f"{TINY_RESULTS}/report/metrics.json"]["data"]}
    return out


STAGES = {"fetch", "prepare", "fetch_transfer", "prepare_transfer", "split", "pretrain", "embed", "embed_raw_pixels", "evaluate",
          "evaluate_raw_pixels", "embed_transfer", "embed_transfer_raw_pixels", "transfer", "transfer_raw_pixels", "semisup",
          "semisup_baselines", "report"}
CARL_DOWNSTREAM = {"pretrain", "embed", "embed_transfer", "evaluate", "transfer", "semisup", "report"}


@pytest.mark.e2e
@needs_fashion_mnist
def test_dvc_exp_run_of_a_preset_then_of_one_changed_key_reruns_only_what_reads_it(tiny_dvc_repo):
    """The experiment `tiny` ran every stage from the default params.yaml and the presets' `-S`
    values; a second, queued experiment that changes CARL's collapse weight re-runs CARL's
    pretraining and what reads it, not the baselines, and `dvc exp show` holds both with their
    params and metrics."""
    origin = tiny_dvc_repo["repo"]
    assert stages_run(tiny_dvc_repo["output"]) == STAGES
    table = pd.read_csv(origin / TINY_RESULTS / "report/tables/main.csv").set_index("method")
    assert list(table.index) == ["raw_pixels", "scratch", "carl"]
    assert table["semisup_0.01_top1_mean"].notna().all() and table["transfer_fashion_mnist_linear_top1_mean"].notna().sum() == 2
    assert json.loads(dvc(origin, "status", "--json")) == {}
    metrics = json.loads(dvc(origin, "metrics", "show", "--json"))
    shown = next(iter(metrics.values()))["data"][f"{TINY_RESULTS}/report/metrics.json"]["data"]
    assert shown["carl"]["linear_top1"] == pytest.approx(table.loc["carl", "linear_top1_mean"], abs=1e-4)
    plots = dvc(origin, "plots", "show", "--json")
    assert "online_knn20_top1" in plots and f"{TINY_RESULTS}/live/digits/carl/seed0/{live.CURVES}/loss.tsv" in plots

    # a sweep of one value: queued, then run by DVC's queue worker in a folder of its own
    dvc(origin, "exp", "run", "--queue", "--name", "entropy5", "-S", "method_params.carl.entropy_weight=5")
    out = queued_run(origin, "entropy5")
    assert stages_run(out) == CARL_DOWNSTREAM, out
    assert not re.search(r"Running stage '\w+@(raw_pixels|scratch)", out), "the baselines do not read CARL's params"
    exps = exp_metrics(origin)
    assert {"tiny", "entropy5"} <= set(exps), exps.keys()
    tiny, changed = exps["tiny"], exps["entropy5"]
    assert (tiny["params"]["method_params"]["carl"]["entropy_weight"], changed["params"]["method_params"]["carl"]["entropy_weight"]) == (1.0, 5)
    assert tiny["metrics"]["carl"] != changed["metrics"]["carl"]
    assert all(tiny["metrics"][row] == changed["metrics"][row] for row in ("raw_pixels", "scratch"))


@pytest.mark.e2e
@needs_fashion_mnist
def test_a_run_pushed_to_the_default_remote_is_pulled_into_a_fresh_clone_and_not_run_again(tiny_dvc_repo, tmp_path, capsys):
    """The run is committed and pushed to the project's default remote (a folder beside the
    clone); a fresh clone beside it pulls it, finds nothing to run and holds the same report."""
    origin = copy_repo(tiny_dvc_repo["repo"], tmp_path / "origin")
    run_in(origin, "git", "add", "params.yaml", "dvc.lock")
    run_in(origin, "git", "commit", "-qm", "tiny")
    pushed = dvc(origin, "push")
    storage = tmp_path / "clusterssl-dvc-storage"  # .dvc/config's default remote, beside the clone
    size = sum(f.stat().st_size for f in storage.rglob("*") if f.is_file())
    with capsys.disabled():  # the README's estimate of what a run pushes is scaled from this
        print(f"\n{pushed.strip().splitlines()[-1]}: {size / 1e6:.1f} MB in {storage}")

    clone = tmp_path / "clone"
    run_in(tmp_path, "git", "clone", "-q", origin, clone)
    dvc(clone, "pull")
    assert json.loads(dvc(clone, "status", "--json")) == {}
    out = dvc(clone, "repro")
    assert not stages_run(out), out
    assert report_bytes(clone) == report_bytes(origin)
    checkpoint = f"{TINY_RESULTS}/runs/digits/carl/seed0/checkpoint.pt"
    assert file_sha256(clone / checkpoint) == file_sha256(origin / checkpoint)
    assert (clone / TINY_RESULTS / "live/digits/carl/seed0" / live.CURVES / "loss.tsv").is_file()


@pytest.mark.e2e
@needs_fashion_mnist
def test_a_snakemake_run_adopted_by_dvc_is_not_run_again(tmp_path):
    """Snakemake runs a preset and a --config value; `clusterssl --preset ... dvc-adopt --config
    ...` writes them into params.yaml and records the outputs in dvc.lock: `dvc status` is clean,
    `dvc repro` runs no stage, and Snakemake still finds nothing to do (the outputs were not
    touched)."""
    from clusterssl.config import load_params

    repo = new_repo(tmp_path / "repo")
    tiny, one_method = "config/presets/tiny.yaml", "methods=[carl]"
    snake = [BIN / "snakemake", "-s", ROOT / "Snakefile", "-d", repo, "--cores", "2", "--configfile", tiny, "--config", one_method]
    run_in(repo, *snake, "-q")
    refused = run_in(repo, BIN / "clusterssl", "dvc-adopt", check=False)  # not the config Snakemake ran
    assert refused.returncode == 2 and "Snakemake has not run params.yaml with no --configfile and no --config" in refused.stderr, refused.stderr
    refused = run_in(repo, BIN / "clusterssl", f"--preset={tiny}", "dvc-adopt", check=False)  # the --config value left out
    assert refused.returncode == 2 and f"with --configfile {tiny} and no --config" in refused.stderr, refused.stderr
    adopted = run_in(repo, BIN / "clusterssl", f"--preset={tiny}", "dvc-adopt", "--config", one_method)
    assert "`dvc status` is clean" in adopted.stdout
    assert load_params(repo / "params.yaml") == load_params(ROOT / "params.yaml", repo / tiny, config={"methods": ["carl"]})
    assert json.loads(dvc(repo, "status", "--json")) == {}
    assert not stages_run(dvc(repo, "repro"))
    assert "Nothing to be done" in run_in(repo, *snake, "-n").stdout
