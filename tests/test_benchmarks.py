"""The benchmarks in benchmarks/: the kornia pipeline they compare against does the same
augmentation as clusterssl.augment, and the scripts run on the tiny preset."""
from __future__ import annotations

import dataclasses
import math
import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from clusterssl.augment import AugmentConfig, augment
from conftest import BIN, ENV, ROOT, preset_in

OFF = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=0.0, jitter_prob=0.0, grayscale=0.0)


@pytest.fixture
def kornia_pipeline(monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("train_step").kornia_pipeline


def both(cfg: AugmentConfig, x: torch.Tensor, kornia_pipeline) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return augment(x, cfg, torch.Generator().manual_seed(0)), kornia_pipeline(cfg, x.shape[-1], x.shape[1])(x)


@pytest.mark.parametrize("c", [1, 3])
def test_kornia_pipeline_with_everything_off_is_identity_like_ours(kornia_pipeline, c):
    x = torch.rand(16, c, 28, 28)
    ours, theirs = both(OFF, x, kornia_pipeline)
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs, x, atol=1e-5, rtol=0)


def test_kornia_pipeline_flips_like_ours(kornia_pipeline):
    x = torch.rand(16, 1, 28, 28)
    ours, theirs = both(dataclasses.replace(OFF, flip=1.0), x, kornia_pipeline)
    torch.testing.assert_close(ours, x.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs, x.flip(-1), atol=1e-5, rtol=0)


def test_kornia_pipeline_draws_brightness_from_the_same_range(kornia_pipeline):
    """Brightness alone, always applied: each image is scaled by a factor in [0.6, 1.4] in both."""
    x = torch.rand(512, 1, 8, 8) * 0.5 + 0.1  # no clamping at 1.4x
    cfg = dataclasses.replace(OFF, jitter_prob=1.0, brightness=0.4, contrast=0.0)
    for out in both(cfg, x, kornia_pipeline):
        factor = (out / x).flatten(1)
        torch.testing.assert_close(factor.min(1).values, factor.max(1).values, atol=1e-4, rtol=0)  # one factor per image
        assert 0.6 - 1e-4 <= factor.min() and factor.max() <= 1.4 + 1e-4
        assert factor.min() < 0.65 and factor.max() > 1.35  # the whole range is drawn, not a narrower one


def test_benchmarks_run_on_the_tiny_preset(tmp_path):
    params = preset_in(tmp_path)
    script = lambda name, *args: subprocess.run([sys.executable, ROOT / "benchmarks" / name, "--params", params, "--steps", "1", *args],
                                                capture_output=True, text=True, env=ENV, cwd=ROOT)
    missing = script("train_step.py")
    assert missing.returncode != 0 and "meta.json is missing" in missing.stderr and "--shape" in missing.stderr, missing.stderr[-2000:]
    for verb in ("fetch", "prepare"):
        prepared = subprocess.run([BIN / "clusterssl", "--params", params, "data", verb], capture_output=True, text=True, env=ENV)
        assert prepared.returncode == 0, prepared.stderr[-2000:]

    step = script("train_step.py", "--rounds", "1", "--methods", "simclr", "--batch", "32")
    assert step.returncode == 0, step.stderr[-3000:]
    from clusterssl.runtime import cpu_has_bf16_units
    bf16 = torch.cuda.is_available() or cpu_has_bf16_units()  # the tiny preset's amp: auto, on this machine
    assert f"batch 32 of (1, 8, 8), bf16 autocast {bf16}" in step.stdout and " images/s " in step.stdout, step.stdout
    assert f"the preset with bf16 autocast {'off' if bf16 else 'on'}" in step.stdout, step.stdout
    assert "kornia.augmentation" in step.stdout and "simclr: the augmentation is" in step.stdout, step.stdout
    assert "x1.00 speed  the preset (channels_last)" in step.stdout and "the preset + torch.compile" in step.stdout, step.stdout
    assert "the preset without the loop's per-step reads of the loss" in step.stdout, step.stdout
    assert "the preset with cuDNN autotuning, not bit for bit" in step.stdout, step.stdout

    layouts = script("job_threads.py", "--rounds", "1", "--cores", "2", "--methods", "simclr", "carl", "--shape", "8", "8", "1", "--startup", "8")
    assert layouts.returncode == 0, layouts.stderr[-3000:]
    assert "x1.00 speed  one after another, 2 threads each" in layouts.stdout, layouts.stdout
    assert "side by side, 1 thread each" in layouts.stdout, layouts.stdout

    backbones = script("backbone_throughput.py", "--batch", "8")
    assert backbones.returncode == 0, backbones.stderr[-3000:]
    first = backbones.stdout.splitlines()[1]  # the ratios are to the preset's own backbone
    assert "x 1.00" in first and "channels [16, 16, 32, 32], cifar stem" in first, backbones.stdout


@pytest.mark.skipif(importlib.util.find_spec("lightly") is None,
                    reason="lightly is not installed: benchmarks/peers.py compares with it (pip install -e '.[bench]')")
def test_peers_runs_both_pipelines_on_a_few_steps_and_prints_the_ratios(tmp_path):
    """benchmarks/peers.py on the tiny preset, a few steps and one short epoch each: it runs every
    part (steps with and without loader workers, epochs, the shared probe) and prints the ratios."""
    from clusterssl import data, paths
    from clusterssl.config import load_params

    params_file = preset_in(tmp_path, eval__linear__epochs=2, eval__linear__lr=[0.01])
    params = load_params(params_file)
    data.fetch("digits", paths.raw_dir(params, "digits"))
    data.prepare("digits", paths.raw_dir(params, "digits"), paths.prepared_dir(params, "digits"))
    peers = subprocess.run([sys.executable, ROOT / "benchmarks" / "peers.py", "--params", params_file, "--steps", "1", "--turns", "1",
                            "--batch", "32", "--max-train", "64", "--epochs", "1", "--workers", "0", "1"],
                           capture_output=True, text=True, env={**ENV, "OMP_NUM_THREADS": "1"}, cwd=ROOT)  # one thread: no spinning on a busy CI machine
    assert peers.returncode == 0, peers.stderr[-3000:]
    out = peers.stdout
    assert "lightly 1." in out and "SimCLRTransform" in out and "solo-learn" in out, out
    for line in ("ratio, step: clusterssl", "x the images/s of lightly, 0 workers", "x the images/s of lightly, 1 workers",
                 "ratio, model step alone: clusterssl", "ratio, data + augmentation alone: clusterssl",
                 "share, clusterssl: data loading + augmentation", "share, lightly, 0 workers: data loading + augmentation",
                 "share, lightly, 1 workers: waiting for the loader", "ratio, epoch: clusterssl"):
        assert line in out, f"{line!r} missing from:\n{out}"
    assert re.search(r"linear probe after 1 equal epochs .*: clusterssl \d+\.\d\d %, lightly \d+\.\d\d %", out), out


def test_shard_reader_reads_every_image_of_an_epoch_and_prints_images_per_worker(monkeypatch, capsys):
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    shard_reader = importlib.import_module("shard_reader")
    image = shard_reader.photo_like(np.random.default_rng(0), 40)
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8 and image.std() > 10  # not flat: JPEG has work to do
    rows = shard_reader.main(["--sizes", "24", "--images", "300", "--batch", "50", "--rounds", "1", "--demand", "1000"])
    out = capsys.readouterr().out
    assert "| px | JPEG KiB | workers | images/s | images/s per worker | workers for 1,000 images/s |" in out
    (row,) = rows
    assert row["px"] == 24 and row["workers"] == 1 and row["images_per_s"] > 0
    assert row["workers_for_demand"] == math.ceil(1000 / row["per_worker"])
