"""The training loop on the tiny preset: resume after an interruption, and the GPU code
paths (bf16 autocast, channels_last, torch.compile). The tiny preset's `pretrain.device: auto`
runs them on the CPU here and on the GPU where one is visible (benchmarks/gpu.sh runs this file
there)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from clusterssl import data, optim, paths, runtime, train
from clusterssl.cli import main
from clusterssl.config import validate
from clusterssl.io import UserError, file_sha256
from conftest import preset_params, read_curves

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(tmp_path):
    params = preset_params("tiny")
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    params["data"]["max_train"] = 256
    params["pretrain"].update(epochs=2, batch_size=64, checkpoint_every=1)
    validate(params)
    data.fetch("digits", paths.raw_dir(params, "digits"))
    data.prepare("digits", paths.raw_dir(params, "digits"), paths.prepared_dir(params, "digits"))
    return params


def live_curves(params: dict, method: str, seed: int) -> dict:
    """A run's dvclive curves, {metric: rows of (step, value)}, without the wall-clock column."""
    return {name: rows.drop(columns="timestamp", errors="ignore").values.tolist()
            for name, rows in read_curves(paths.live_dir(params, method, seed)).items()}


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(tiny, monkeypatch, capsys):
    straight = train.pretrain(tiny, "carl", 0, threads=1, progress=False)
    reference = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    curves = live_curves(tiny, "carl", 0)
    assert curves and all(len(rows) == 2 for rows in curves.values()), curves  # one row per epoch
    for f in straight.iterdir():
        f.unlink()

    # interrupt the second epoch: resume.pt from epoch 1 stays, no final outputs appear
    calls = {"n": 0}
    original = optim.lr_at

    def failing_lr_at(step, *a, **k):
        calls["n"] += 1
        if step == 4:  # first step of epoch 2 (256 images / batch 64 = 4 steps per epoch)
            raise KeyboardInterrupt
        return original(step, *a, **k)

    monkeypatch.setattr(optim, "lr_at", failing_lr_at)
    with pytest.raises(KeyboardInterrupt):
        train.pretrain(tiny, "carl", 0, threads=1, progress=False)
    assert (straight / "resume.pt").exists()
    assert not any((straight / f).exists() for f in ("checkpoint.pt", "history.csv", "config.json"))

    monkeypatch.setattr(optim, "lr_at", original)
    train.pretrain(tiny, "carl", 0, threads=1, progress=False)
    assert "resuming" in capsys.readouterr().out
    assert not (straight / "resume.pt").exists()
    resumed = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    for k in reference:
        assert torch.allclose(reference[k].float(), resumed[k].float(), atol=1e-5), k
    assert list(pd.read_csv(straight / "history.csv")["epoch"]) == [1, 2]
    # the live curves of the resumed run: epoch 1 rewritten from the restored history, then epoch 2
    assert live_curves(tiny, "carl", 0) == curves


def test_resume_file_from_other_params_is_set_aside(tiny, capsys):
    run = paths.run_dir(tiny, "simclr", 0)
    run.mkdir(parents=True)
    torch.save({"fingerprint": "something else"}, run / "resume.pt")
    train.pretrain(tiny, "simclr", 0, threads=1, progress=False)
    out = capsys.readouterr().out
    assert "not resuming" in out and "other params" in out and "resume.pt.rejected" in out
    assert (run / "resume.pt.rejected").exists() and (run / "checkpoint.pt").exists()


class CreatesAFile:
    """A pickle that, when loaded by an unsafe loader, creates the file it names."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_resume_file_runs_no_code_and_is_set_aside(tiny, tmp_path, capsys):
    run = paths.run_dir(tiny, "carl", 0)
    run.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"fingerprint": CreatesAFile(marker)}, run / "resume.pt")
    train.pretrain(tiny, "carl", 0, threads=1, progress=False)
    assert not marker.exists()
    out = capsys.readouterr().out
    assert "not a clusterssl resume checkpoint" in out and "training from epoch 1" in out
    assert (run / "resume.pt.rejected").exists() and not (run / "resume.pt").exists()


@pytest.fixture
def carl_run(tiny):
    tiny["pretrain"]["epochs"] = 1
    return train.pretrain(tiny, "carl", 0, threads=1, progress=False)


class RunsAShellCommand:
    """A pickle that, when loaded by an unsafe loader, runs `touch` on the file it names."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("crafted, call", [(CreatesAFile, "io.open"), (RunsAShellCommand, f"{os.system.__module__}.system")])
def test_crafted_checkpoint_runs_no_code(tiny, carl_run, tmp_path, crafted, call):
    marker = tmp_path / "pwned"
    torch.save(crafted(marker), carl_run / "checkpoint.pt")
    with pytest.raises(UserError, match=r"checkpoint.pt: not a clusterssl checkpoint \(torch.load, weights only") as refused:
        runtime.load_trained(tiny, "carl", 0)
    assert not marker.exists()
    # one line that names the call the file would have made, and what to do
    message = str(refused.value)
    assert f"it would call {call}, which weights-only loading refuses" in message, message
    assert "\n" not in message and message.endswith("delete it and run `clusterssl pretrain --method carl --seed 0`")


def test_saving_the_same_state_twice_gives_the_same_bytes(tmp_path):
    # torch.save to a path names the archive's folder after the file (a random temporary name):
    # equal weights then hashed differently and DVC saw a changed checkpoint
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "gen": torch.Generator().manual_seed(3).get_state(), "epoch": 2}
    runtime.save_state(state, tmp_path / "a" / "checkpoint.pt")
    runtime.save_state(state, tmp_path / "b" / "checkpoint.pt")
    assert (tmp_path / "a" / "checkpoint.pt").read_bytes() == (tmp_path / "b" / "checkpoint.pt").read_bytes()


def test_checkpoint_from_another_method_seed_or_params_is_refused(tiny, carl_run):
    model, state = runtime.load_trained(tiny, "carl", 0)  # its own: fine
    assert state["seed"] == 0
    simclr = paths.run_dir(tiny, "simclr", 0)
    simclr.mkdir(parents=True)
    shutil.copy(carl_run / "checkpoint.pt", simclr / "checkpoint.pt")  # copied over another run
    with pytest.raises(UserError, match="holds a 'carl' run with seed 0 .* not 'simclr' seed 0; delete it"):
        runtime.load_trained(tiny, "simclr", 0)
    seed1 = paths.run_dir(tiny, "carl", 1)
    seed1.mkdir(parents=True)
    shutil.copy(carl_run / "checkpoint.pt", seed1 / "checkpoint.pt")
    with pytest.raises(UserError, match="not 'carl' seed 1"):
        runtime.load_trained(tiny, "carl", 1)
    tiny["pretrain"]["epochs"] = 3  # params changed since it was trained
    with pytest.raises(UserError, match=r"made with other params \(pretrain differ"):
        runtime.load_trained(tiny, "carl", 0)


def test_truncated_or_foreign_checkpoint_is_refused(tiny, carl_run):
    checkpoint = carl_run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(UserError, match="not a clusterssl checkpoint"):
        runtime.load_trained(tiny, "carl", 0)
    torch.save({"model": {}}, checkpoint)
    with pytest.raises(UserError, match="missing config, seed"):
        runtime.load_trained(tiny, "carl", 0)
    torch.save([1, 2], checkpoint)
    with pytest.raises(UserError, match="holds a list"):
        runtime.load_trained(tiny, "carl", 0)


def _pretrain_in_process(capsys, params, tmp_path):
    """`clusterssl pretrain` with these params, in this process: (exit status, stderr)."""
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    status = main(["--params", str(params_file), "pretrain", "--method", "carl", "--threads", "1", "--no-progress"])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("max_train, batch_size, wrong", [
    (3, 64, "data.max_train is 3 but pretrain.batch_size is 64: a step needs a whole batch; raise data.max_train to at least 64"),
    (None, 4096, "digits has {n} training images but pretrain.batch_size is 4096: a step needs a whole batch; "
                 "lower pretrain.batch_size to at most {n}"),
], ids=["max_train_below_the_batch", "dataset_smaller_than_the_batch"])
def test_fewer_images_than_a_batch_is_one_line_naming_the_keys(tiny, tmp_path, capsys, max_train, batch_size, wrong):
    tiny["data"]["max_train"] = max_train
    tiny["pretrain"]["batch_size"] = batch_size
    status, err = _pretrain_in_process(capsys, tiny, tmp_path)
    assert status == 2 and err.startswith("clusterssl: error: ") and err.count("\n") == 1, err
    assert wrong.format(n=data.load_meta(paths.prepared_dir(tiny, "digits"))["num_train"]) in err, err
    assert not paths.run_dir(tiny, "carl", 0).exists()


def test_an_empty_prepared_train_split_is_one_line_naming_the_folder(tiny, tmp_path, capsys):
    prepared = paths.prepared_dir(tiny, "digits")
    test = data.load_prepared(prepared, "test")
    nothing = (test.images[:0], test.labels[:0])
    data.write_prepared(prepared, "digits", data.load_meta(prepared)["classes"], nothing, (test.images, test.labels))
    status, err = _pretrain_in_process(capsys, tiny, tmp_path)
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err and "Warning" not in err, err
    assert f"{prepared}: its train split holds no images; delete {prepared} and run `clusterssl data prepare digits` again" in err
    assert not paths.run_dir(tiny, "carl", 0).exists()


def test_a_seed_numpy_cannot_take_is_refused_past_the_cli_too(tiny):
    # the CLI refuses it first; this guards callers of train.pretrain (tune's proxy.train_seeds)
    with pytest.raises(UserError, match=f"seed {2**32} is out of range: numpy and torch take seeds from 0 to {2**32 - 1}"):
        train.pretrain(tiny, "carl", 2**32, threads=1, progress=False)
    assert not paths.run_dir(tiny, "carl", 2**32).exists()


@pytest.mark.parametrize("method", ["carl", "simclr"])
def test_bf16_autocast_and_channels_last(tiny, method):
    tiny["pretrain"].update(amp="bf16", channels_last=True, epochs=1)
    run = train.pretrain(tiny, method, 0, threads=1, progress=False)
    h = pd.read_csv(run / "history.csv")
    assert h["loss"].notna().all() and (h["loss"] > 0).all()
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    record = json.loads((run / "config.json").read_text())
    assert record["device"] == expected and record["autocast"] == "bf16"


@pytest.mark.parametrize("units, device, amp, expected", [
    (True, "cpu", "auto", True), (False, "cpu", "auto", False), (False, "cuda", "auto", True),
    (True, "cpu", "fp32", False), (True, "cuda", "fp32", False), (False, "cpu", "bf16", True)])
def test_amp_auto_is_bf16_on_cuda_and_on_cpus_with_bf16_units_only(monkeypatch, units, device, amp, expected):
    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: units)
    assert runtime.bf16_autocast({"amp": amp}, torch.device(device)) is expected


def test_the_run_records_the_precision_amp_auto_chose_on_this_machine(tiny):
    tiny["pretrain"].update(amp="auto", epochs=1)
    tiny["data"]["max_train"] = 128
    run = train.pretrain(tiny, "simclr", 0, threads=1, progress=False)
    chosen = runtime.bf16_autocast(tiny["pretrain"], runtime.pick_device(tiny["pretrain"]["device"]))
    assert json.loads((run / "config.json").read_text())["autocast"] == ("bf16" if chosen else "fp32")


def test_torch_compile(tiny):
    pytest.importorskip("torch._inductor")
    tiny["pretrain"].update(compile=True, epochs=1)
    tiny["data"]["max_train"] = 128
    run = train.pretrain(tiny, "simclr", 0, threads=1, progress=False)
    assert pd.read_csv(run / "history.csv")["loss"].notna().all()


def test_on_epoch_start_gets_each_epochs_current_features(tiny, monkeypatch):
    from clusterssl.methods.simclr import SimCLR

    seen = {}
    monkeypatch.setattr(SimCLR, "on_epoch_start", lambda self, epoch, encode: seen.setdefault(epoch, encode()), raising=False)
    tiny["pretrain"]["epochs"] = 2
    train.pretrain(tiny, "simclr", 0, threads=1, progress=False)
    assert sorted(seen) == [0, 1]
    assert seen[0].shape == (256, 32)  # max_train images x the tiny backbone's feature width
    assert not torch.equal(seen[0], seen[1])  # epoch 1 sees the encoder after an epoch of training


# --- preemption: real signals to a real `clusterssl pretrain` process --------------------------------
def _pretrain_cmd(params_file, method="carl"):
    return [Path(sys.executable).parent / "clusterssl", "--params", str(params_file), "pretrain", "--method", method,
            "--seed", "0", "--threads", "1", "--no-progress"]


@pytest.fixture(params=["carl"])
def signal_run(request, tiny, tmp_path):
    """A method on all digits (22 steps an epoch), 3 epochs, a resume point after each; and the
    weights of the same run uninterrupted, to compare with."""
    method = request.param
    tiny["data"]["max_train"] = None
    tiny["pretrain"].update(epochs=3, checkpoint_every=1)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny))
    cmd = _pretrain_cmd(params_file, method)
    subprocess.run(cmd, check=True, capture_output=True)
    run = paths.run_dir(tiny, method, 0)
    reference = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    history = pd.read_csv(run / "history.csv")
    reference_sha256 = file_sha256(run / "checkpoint.pt")
    shutil.rmtree(run)
    return cmd, run, (reference, reference_sha256), history


def _start_and_wait_for_epoch(cmd, epoch):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith(f'{{"epoch": {epoch},'):
            return proc
    raise AssertionError(f"pretraining ended before epoch {epoch}: {proc.stderr.read()}")


def _assert_same_run(run, reference, history):
    reference, reference_sha256 = reference
    resumed = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert resumed.keys() == reference.keys()
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), f"{k} differs from the uninterrupted run"
    numbers = lambda h: h.drop(columns=["seconds", "images_per_s"])
    pd.testing.assert_frame_equal(numbers(pd.read_csv(run / "history.csv")), numbers(history))
    assert not (run / "resume.pt").exists() and not list(run.glob(".*.tmp"))
    assert file_sha256(run / "checkpoint.pt") == reference_sha256  # the same file: DVC sees no change


# state beyond weights and optimizer: an EMA teacher (BYOL), a queue (MoCo v2), per-instance
# buffers (CoKe), centres placed by k-means at the start of epoch 2 (CADC in the tiny preset)
@pytest.mark.parametrize("signal_run", ["carl", "byol", "moco_v2", "coke", "cadc"], indirect=True)
def test_sigterm_saves_at_the_next_step_and_a_rerun_resumes_bit_for_bit(signal_run):
    cmd, run, reference, history = signal_run
    proc = _start_and_wait_for_epoch(cmd, 1)
    proc.send_signal(signal.SIGTERM)  # lands in epoch 2 (or at its first step)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM at epoch 2, step" in err and "run the same command again" in err
    state = torch.load(run / "resume.pt", weights_only=True)
    assert state["epoch"] == 1 and "step" in state
    assert not (run / "checkpoint.pt").exists()

    rerun = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert f"at epoch 2, step {state['step']}" in rerun.stdout
    _assert_same_run(run, reference, history)


def test_sigkill_mid_epoch_resumes_from_the_last_epoch_checkpoint_bit_for_bit(signal_run):
    cmd, run, reference, history = signal_run
    proc = _start_and_wait_for_epoch(cmd, 2)
    while not (run / "resume.pt").exists() or torch.load(run / "resume.pt", weights_only=True)["epoch"] < 2:
        assert proc.poll() is None, "pretraining ended before it could be killed"
        time.sleep(0.01)
    proc.kill()  # SIGKILL: nothing runs, nothing is saved
    proc.communicate(timeout=60)
    (run / ".history.csv.leftover.tmp").write_text("a killed atomic write")  # what a kill mid-write leaves
    rerun = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert f"resuming {run} at epoch 3, step 0" in rerun.stdout
    _assert_same_run(run, reference, history)


@pytest.fixture
def kernel_switches():
    """Puts back the global kernel switches `use_device` sets."""
    was = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    yield
    torch.use_deterministic_algorithms(was[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = was[1:]


def test_cuda_runs_deterministic_kernels_and_cpu_runs_are_left_alone(kernel_switches, monkeypatch):
    # the bit-for-bit tests above failed on an H200 with cuDNN autotuning and pass with these
    # switches (docs/gpu.md); here the CUDA branch runs with a faked GPU
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    assert runtime.use_device("cpu").type == "cpu"
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.use_device("auto").type == "cuda"
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_pretrain_deterministic_false_lets_cuda_autotune_and_either_value_resets_the_switches(kernel_switches, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    assert runtime.use_device("cpu", deterministic=False).type == "cpu"  # CPU: left as it was
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    runtime.use_device("auto", deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    runtime.use_device("auto")  # the default, after the other mode in the same process
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    # the params key: a params file written before it existed asks for today's deterministic kernels
    assert runtime.deterministic_kernels({}) and runtime.deterministic_kernels({"deterministic": True})
    assert not runtime.deterministic_kernels({"deterministic": False})


def _kernels_run(params: dict, folder: Path, deterministic, monkeypatch) -> tuple[dict, pd.DataFrame, dict, list]:
    """A tiny SimCLR pretraining with `pretrain.deterministic` set to `deterministic` (None: left
    out); its weights, history, config.json and what the loop asked use_device for."""
    params = {**params, "paths": {**params["paths"], "results": str(folder)}, "pretrain": dict(params["pretrain"])}
    params["pretrain"].pop("deterministic", None)
    if deterministic is not None:
        params["pretrain"]["deterministic"] = deterministic
    validate(params)
    asked = []

    def use_device(name, deterministic=True):  # the device policy, noting which kernels the loop asked for
        asked.append(deterministic)
        return runtime.use_device(name, deterministic)

    monkeypatch.setattr(train, "use_device", use_device)
    run = train.pretrain(params, "simclr", 0, threads=1, progress=False)
    weights = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    return weights, pd.read_csv(run / "history.csv"), json.loads((run / "config.json").read_text()), asked


def test_pretrain_deterministic_both_values_run_and_the_default_is_bit_identical_to_leaving_it_out(tiny, tmp_path, monkeypatch,
                                                                                                    kernel_switches):
    assert yaml.safe_load((ROOT / "params.yaml").read_text())["pretrain"]["deterministic"] is True  # the default
    runs = {value: _kernels_run(tiny, tmp_path / str(value), value, monkeypatch) for value in (None, True, False)}
    numbers = lambda h: h.drop(columns=["seconds", "images_per_s"])
    (unset, unset_history, unset_config, _), (default, default_history, default_config, _) = runs[None], runs[True]
    assert unset.keys() == default.keys() and all(torch.equal(unset[k], default[k]) for k in unset)
    pd.testing.assert_frame_equal(numbers(unset_history), numbers(default_history))
    assert "deterministic" not in unset_config["pretrain"] and default_config["pretrain"]["deterministic"] is True
    autotuned, autotuned_history, autotuned_config, _ = runs[False]
    assert autotuned_config["pretrain"]["deterministic"] is False and autotuned_history["loss"].notna().all()
    # the loop hands the value to the device policy (on a GPU it picks the kernels; a CPU has one kind)
    assert [r[3] for r in runs.values()] == [[True], [True], [False]]
    if autotuned_config["device"] == "cpu":
        assert all(torch.equal(unset[k], autotuned[k]) for k in unset)
    # the report's run record says which kernels each run's config.json records
    from clusterssl.report import kernels_text

    assert kernels_text({"carl": unset_config, "simclr": default_config}).startswith("deterministic, every method")
    assert kernels_text({"carl": default_config, "simclr": autotuned_config}).startswith("deterministic: carl; autotuned: simclr")


def test_nan_stops_naming_epoch_step_and_term_and_keeps_the_last_checkpoint(tiny, monkeypatch):
    from clusterssl.methods.base import get_method

    carl = get_method("carl")
    original = carl.training_step

    def poisoned(self, batch):
        terms = original(self, batch)
        if poisoned.calls == 5:  # 4 steps an epoch: epoch 2, step 1
            terms["entropy_kl"] = torch.tensor(float("nan"))
            terms["loss"] = terms["loss"] + terms["entropy_kl"]
        poisoned.calls += 1
        return terms

    poisoned.calls = 0
    monkeypatch.setattr(carl, "training_step", poisoned)
    with pytest.raises(UserError, match=r"loss became nan at epoch 2, step 1 \(entropy_kl = nan\); .*resume.pt \(the last epoch checkpoint\) is kept"):
        train.pretrain(tiny, "carl", 0, threads=1, progress=False)
    run = paths.run_dir(tiny, "carl", 0)
    assert torch.load(run / "resume.pt", weights_only=True)["epoch"] == 1
    assert not (run / "checkpoint.pt").exists()


def test_a_methods_recipe_replaces_the_shared_keys_and_is_recorded(tiny):
    """method_params.<m>.augment / .pretrain replace those shared keys for that method only; the
    run's config.json records the keys it trained with, and a checkpoint trained with another
    recipe is refused."""
    from clusterssl.io import read_json
    from clusterssl.methods.base import get_method

    shared = {section: dict(tiny[section]) for section in ("augment", "pretrain")}
    tiny["pretrain"]["epochs"] = 1
    tiny["method_params"]["carl"]["pretrain"] = {"optimizer": "adam", "lr": 0.001, "weight_decay": 0.0}
    tiny["method_params"]["carl"]["augment"] = {"crop_scale": [0.2, 1.0]}
    validate(tiny)
    cfg = runtime.pretrain_config(tiny, "carl")
    assert cfg["pretrain"] == {**tiny["pretrain"], "optimizer": "adam", "lr": 0.001, "weight_decay": 0.0}
    assert cfg["augment"] == {**shared["augment"], "crop_scale": [0.2, 1.0]}
    assert "pretrain" not in cfg["method_params"] and "augment" not in cfg["method_params"]
    assert runtime.pretrain_config(tiny, "simclr")["pretrain"] == tiny["pretrain"]  # others keep the shared keys
    assert runtime.recipe(tiny, "carl") == {"augment.crop_scale": [0.2, 1.0], "pretrain.optimizer": "adam", "pretrain.lr": 0.001, "pretrain.weight_decay": 0.0}

    run = train.pretrain(tiny, "carl", 0, threads=1, progress=False)
    saved = read_json(run / "config.json")
    assert saved["pretrain"]["optimizer"] == "adam" and saved["augment"]["crop_scale"] == [0.2, 1.0]
    # what the report's methods table reads, recorded at pretraining time
    assert saved["recipe"] == runtime.recipe(tiny, "carl") and saved["provenance"] == get_method("carl").provenance
    model, _ = runtime.load_trained(tiny, "carl", 0)  # the recipe it was trained with: accepted
    method = runtime.build_method(cfg, 1, 10, 256)
    assert type(optim.make_optimizer(method, cfg["pretrain"], 0.001)) is torch.optim.Adam
    del tiny["method_params"]["carl"]["pretrain"]
    with pytest.raises(UserError, match=r"pretrain"):
        runtime.load_trained(tiny, "carl", 0)


@pytest.mark.parametrize("method, has_prototypes", [("carl", True), ("swav", True), ("coke", True), ("simclr", False)])
def test_history_logs_online_knn_and_prototype_use_without_changing_training(tiny, tmp_path, monkeypatch, method, has_prototypes):
    # the monitor scores 32 images: two epochs can score the same by chance, as SimCLR's did in
    # bf16; fp32 pins the runs whose monitor moved
    tiny["pretrain"]["amp"] = "fp32"
    run = train.pretrain(tiny, method, 0, threads=1, progress=False)
    weights = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    h = pd.read_csv(run / "history.csv")
    assert h["online_knn20_top1"].between(0, 100).all() and h["online_knn20_top1"].nunique() > 1
    if has_prototypes:
        k = tiny["method_params"][method].get("num_prototypes") or tiny["method_params"][method]["num_clusters"][-1]
        assert (h["prototypes"] == k).all() and h["prototypes_used"].between(1, k).all()
        assert h["prototype_entropy"].between(0, 1).all()
    else:
        assert "prototypes_used" not in h

    # the monitor only reads the weights: a different monitor subset leaves training bit for bit
    monkeypatch.setattr(train, "MONITOR_BANK", 17)
    monkeypatch.setattr(train, "MONITOR_QUERY", 5)
    other = dict(tiny, paths={**tiny["paths"], "results": str(tmp_path / "other")})
    rerun = train.pretrain(other, method, 0, threads=1, progress=False)
    again = torch.load(rerun / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    # and the same seed's checkpoint.pt is the same file, byte for byte: DVC sees no change
    assert file_sha256(rerun / "checkpoint.pt") == file_sha256(run / "checkpoint.pt")


def test_prototype_use_counts_and_normalised_entropy():
    from clusterssl.methods.base import Method

    backbone = torch.nn.Linear(2, 2)
    backbone.num_features = 2
    m = Method(backbone, {}, 10, 10)
    assert m.take_usage() == {}
    m.record_assignments(torch.tensor([0, 1]), 4)
    m.record_assignments(torch.tensor([1, 0]), 4)
    assert m.take_usage() == {"prototypes": 4, "prototypes_used": 2, "prototype_entropy": 0.5}  # log 2 / log 4
    m.record_assignments(torch.tensor([0, 1, 2, 3]), 4)
    assert m.take_usage()["prototype_entropy"] == 1.0
    assert m.take_usage() == {}  # reset after each epoch
