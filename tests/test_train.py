"""The training loop on the tiny preset: resume after an interruption, and the GPU code
paths (bf16 autocast, channels_last, torch.compile) exercised on the CPU."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from clusterssl import data, paths, train
from clusterssl.config import validate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(tmp_path):
    params = yaml.safe_load((ROOT / "config/presets/tiny.yaml").read_text())
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    params["data"]["max_train"] = 256
    params["pretrain"].update(epochs=2, batch_size=64, checkpoint_every=1)
    validate(params)
    data.fetch("digits", paths.raw_dir(params, "digits"))
    data.prepare("digits", paths.raw_dir(params, "digits"), paths.prepared_dir(params, "digits"))
    return params


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(tiny, monkeypatch, capsys):
    straight = train.pretrain(tiny, "carl", 0, threads=1, progress=False)
    reference = torch.load(straight / "checkpoint.pt", weights_only=False)["model"]
    for f in straight.iterdir():
        f.unlink()

    # interrupt the second epoch: resume.pt from epoch 1 stays, no final outputs appear
    calls = {"n": 0}
    original = train.lr_at

    def failing_lr_at(step, *a, **k):
        calls["n"] += 1
        if step == 4:  # first step of epoch 2 (256 images / batch 64 = 4 steps per epoch)
            raise KeyboardInterrupt
        return original(step, *a, **k)

    monkeypatch.setattr(train, "lr_at", failing_lr_at)
    with pytest.raises(KeyboardInterrupt):
        train.pretrain(tiny, "carl", 0, threads=1, progress=False)
    assert (straight / "resume.pt").exists()
    assert not any((straight / f).exists() for f in ("checkpoint.pt", "history.csv", "config.json"))

    monkeypatch.setattr(train, "lr_at", original)
    train.pretrain(tiny, "carl", 0, threads=1, progress=False)
    assert "resuming" in capsys.readouterr().out
    assert not (straight / "resume.pt").exists()
    resumed = torch.load(straight / "checkpoint.pt", weights_only=False)["model"]
    for k in reference:
        assert torch.allclose(reference[k].float(), resumed[k].float(), atol=1e-5), k
    assert list(pd.read_csv(straight / "history.csv")["epoch"]) == [1, 2]


def test_resume_file_from_other_params_is_ignored(tiny, capsys):
    run = paths.run_dir(tiny, "simclr", 0)
    run.mkdir(parents=True)
    torch.save({"fingerprint": "something else"}, run / "resume.pt")
    train.pretrain(tiny, "simclr", 0, threads=1, progress=False)
    assert "ignoring" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["carl", "simclr"])
def test_bf16_autocast_and_channels_last_on_cpu(tiny, method):
    tiny["pretrain"].update(amp="bf16", channels_last=True, epochs=1)
    run = train.pretrain(tiny, method, 0, threads=1, progress=False)
    h = pd.read_csv(run / "history.csv")
    assert h["loss"].notna().all() and (h["loss"] > 0).all()


def test_torch_compile_on_cpu(tiny):
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
