"""The benchmarks in benchmarks/: the kornia pipeline they compare against does the same
augmentation as clusterssl.augment, and the scripts run on the tiny preset."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

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
    assert "batch 32 of (1, 8, 8), bf16 autocast False" in step.stdout and " images/s " in step.stdout, step.stdout
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
