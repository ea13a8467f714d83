"""Data-parallel pretraining: N processes (gloo, on CPU) compute the loss and gradients that one
process computes on the same global batch, for every method; `clusterssl pretrain` with
pretrain.processes 2 launches torchrun and leaves one run, written once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import PARAMS_YAML, preset_params

TESTS = Path(__file__).resolve().parent
METHODS = ["simclr", "swav", "carl", "coke", "byol", "moco_v2", "cueco", "cc", "cadc"]


def torchrun(processes: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), *sys.path]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           str(TESTS / "ddp_worker.py"), str(PARAMS_YAML), str(out), ",".join(METHODS)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return torchrun(1, tmp / "one.pt"), torchrun(2, tmp / "two.pt")


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_give_the_loss_and_gradients_of_one_on_the_global_batch(one_and_two, method):
    one, two = one_and_two[0][method], one_and_two[1][method]
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5, abs=1e-6)
    for step, (g1, g2) in enumerate(zip(one["grads"], two["grads"])):
        assert g1.keys() == g2.keys(), step
        total = torch.cat([g.flatten() for g in g1.values()]).norm()
        for name in g1:
            # float32 rounding differs (sums in another order) and sharp softmaxes (Sinkhorn's
            # epsilon 0.05) amplify it over steps; a missing gather is off by 10% or more. A
            # gradient that is zero in exact arithmetic (a bias before a BatchNorm) is rounding
            # only: it is measured against the whole gradient's scale.
            error = float((g2[name] - g1[name]).norm() / torch.maximum(g1[name].norm(), 1e-3 * total))
            assert error < 1e-3, f"step {step}, {name}: relative error {error:.2e}"


def _tiny_params(tmp_path, **pretrain) -> Path:
    import yaml

    from clusterssl import data, paths
    from clusterssl.config import validate

    params = preset_params("tiny")
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    params["data"]["max_train"] = 256
    params["pretrain"].update({"epochs": 1, "batch_size": 64, "device": "cpu", **pretrain})  # gloo, also where a GPU is visible
    validate(params)
    data.fetch("digits", paths.raw_dir(params, "digits"))
    data.prepare("digits", paths.raw_dir(params, "digits"), paths.prepared_dir(params, "digits"))
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    return f


def _pretrain(params_file: Path, method="carl"):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "clusterssl.cli", "--params", str(params_file), "pretrain", "--method", method,
                           "--seed", "0", "--threads", "1", "--no-progress"], env=env, capture_output=True, text=True, timeout=600)


def test_the_pretrain_verb_runs_two_processes_through_torchrun_and_writes_one_run(tmp_path):
    done = _pretrain(_tiny_params(tmp_path, processes=2))
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "results/runs/digits/carl/seed0"
    assert done.stdout.strip().splitlines()[-1] == str(run)  # printed once, by rank 0
    config = json.loads((run / "config.json").read_text())
    assert config["pretrain"]["processes"] == 2 and config["train_images"] == 256
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "online_knn20_top1" in history[0]
    # live curves from rank 0 only: a row per epoch as in history.csv, and no logger failure from a second writer
    loss = tmp_path / "results/live/digits/carl/seed0/plots/metrics/loss.tsv"
    assert len(loss.read_text().splitlines()) == len(history) and "live training curves stopped" not in done.stderr
    import yaml

    from clusterssl.runtime import load_trained

    model, _ = load_trained(yaml.safe_load((tmp_path / "params.yaml").read_text()), "carl", 0)  # the plain model's keys
    assert not any(isinstance(m, torch.nn.parallel.DistributedDataParallel) for m in model.modules())


def test_two_processes_with_compile_bf16_and_channels_last(tmp_path):
    """The GPU settings together under DDP (compiled DDP step, bf16 autocast), on CPU."""
    done = _pretrain(_tiny_params(tmp_path, processes=2, compile=True, amp="bf16", channels_last=True), method="simclr")
    assert done.returncode == 0, done.stderr[-3000:]
    history = (tmp_path / "results/runs/digits/simclr/seed0/history.csv").read_text().splitlines()
    assert len(history) == 2 and "nan" not in history[1]


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path):
    done = _pretrain(_tiny_params(tmp_path, processes=2, batch_size=63))
    assert done.returncode != 0
    assert "pretrain.batch_size 63 does not split evenly over pretrain.processes 2; make it a multiple of 2" in done.stderr
    assert not (tmp_path / "results/runs/digits").exists()


def test_more_processes_than_gpus_is_refused_before_launching(tmp_path, monkeypatch, capsys):
    from clusterssl import cli

    params = _tiny_params(tmp_path, processes=2, device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("subprocess.Popen", lambda *a, **k: pytest.fail("torchrun was started"))
    assert cli.main(["--params", str(params), "pretrain", "--method", "simclr"]) != 0
    err = capsys.readouterr().err
    assert "pretrain.processes is 2 but 1 GPU(s) are visible" in err and "pretrain.device to cpu" in err, err
    assert not (tmp_path / "results").exists()


def test_carl_draws_the_same_random_prototype_blocks_on_every_process(tmp_path):
    """CARL's random partition (`partition_size`) is drawn by each process from its own
    generator, seeded alike: the blocks must agree, or each process would train other blocks
    than the gradients DDP averages assume. The real verb, its seeding and its training loop."""
    import yaml

    params_file = _tiny_params(tmp_path, processes=2)
    params = yaml.safe_load(params_file.read_text())
    params["method_params"].setdefault("carl", {}).update(num_prototypes=20, partition_size=5)
    params_file.write_text(yaml.safe_dump(params))
    out = tmp_path / "blocks"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), *sys.path]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(TESTS / "carl_blocks_worker.py"), str(params_file), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    steps = 256 // 64  # one epoch of data.max_train 256 at batch 64
    for r in ranks:
        assert r["exit_status"] == 0 and len(r["blocks"]) == steps
        for blocks in r["blocks"]:
            assert blocks.shape == (4, 5) and sorted(blocks.flatten().tolist()) == list(range(20))  # a partition of the 20
    assert any(not torch.equal(a, ranks[0]["blocks"][0]) for a in ranks[0]["blocks"][1:]), "the same blocks at every step"
    for step, (a, b) in enumerate(zip(ranks[0]["blocks"], ranks[1]["blocks"])):
        assert torch.equal(a, b), f"step {step}: rank 0 drew {a.tolist()}, rank 1 drew {b.tolist()}"
