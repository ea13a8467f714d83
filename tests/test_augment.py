"""Batched augmentations: shapes, value range, identities, determinism under a seed, views."""
from __future__ import annotations

import pytest
import torch

from clusterssl.augment import (
    AugmentConfig,
    ViewSpec,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment,
    colour,
    grey,
    make_views,
    random_resized_crop,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(n=3, c=1, h=8, w=None, seed=0):
    return torch.rand(n, c, h, w or h, generator=gen(seed + 100))


# --- random resized crop --------------------------------------------------------------------
@pytest.mark.parametrize("size", [4, 8, 13, 32])
@pytest.mark.parametrize("c", [1, 3])
def test_crop_shape_and_range(size, c):
    x = images(c=c, h=12)
    y = random_resized_crop(x, size, (0.08, 1.0), (0.75, 4 / 3), 0.5, gen())
    assert y.shape == (3, c, size, size)
    assert y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1


def test_crop_full_scale_no_flip_is_identity():
    x = images(c=3, h=8)
    y = random_resized_crop(x, 8, (1.0, 1.0), (1.0, 1.0), 0.0, gen())
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_crop_full_scale_flip_is_mirror():
    x = images(c=1, h=9, w=9)
    y = random_resized_crop(x, 9, (1.0, 1.0), (1.0, 1.0), 1.0, gen())
    torch.testing.assert_close(y, x.flip(-1), atol=1e-5, rtol=0)


def test_crop_flip_is_per_sample():
    x = images(n=64, c=1, h=6)
    y = random_resized_crop(x, 6, (1.0, 1.0), (1.0, 1.0), 0.5, gen(3))
    same = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(64)]
    flipped = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(64)]
    assert all(a or b for a, b in zip(same, flipped))
    assert any(same) and any(flipped)


def test_crop_downscale_of_constant_image_is_constant():
    x = torch.full((2, 1, 10, 10), 0.3)
    y = random_resized_crop(x, 5, (0.2, 1.0), (0.5, 2.0), 0.5, gen())
    torch.testing.assert_close(y, torch.full((2, 1, 5, 5), 0.3))


def test_crop_seeded():
    x = images(c=3, h=10)
    args = (10, (0.2, 1.0), (0.75, 4 / 3), 0.5)
    a = random_resized_crop(x, *args, gen(7))
    b = random_resized_crop(x, *args, gen(7))
    c = random_resized_crop(x, *args, gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


# --- colour ---------------------------------------------------------------------------------
def strong_cfg(**kw):
    base = dict(jitter_prob=1.0, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.5, grayscale=0.5, solarize=0.5)
    base.update(kw)
    return AugmentConfig(**base)


@pytest.mark.parametrize("c", [1, 3])
def test_colour_shape_and_range(c):
    x = images(n=16, c=c, h=6)
    y = colour(x, strong_cfg(), gen())
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(y, x)


@pytest.mark.parametrize("c", [1, 3])
def test_colour_disabled_is_identity(c):
    x = images(n=4, c=c, h=5)
    cfg = AugmentConfig(jitter_prob=0.0, grayscale=0.0, solarize=0.0)
    torch.testing.assert_close(colour(x, cfg, gen()), x)


def test_colour_seeded():
    x = images(n=8, c=3, h=5)
    assert torch.equal(colour(x, strong_cfg(), gen(1)), colour(x, strong_cfg(), gen(1)))
    assert not torch.allclose(colour(x, strong_cfg(), gen(1)), colour(x, strong_cfg(), gen(2)))


def test_colour_grayscale_always_gives_equal_channels():
    x = images(n=4, c=3, h=5)
    y = colour(x, AugmentConfig(jitter_prob=0.0, grayscale=1.0, solarize=0.0), gen())
    torch.testing.assert_close(y, grey(x).expand_as(x))


def test_colour_solarize_always():
    x = images(n=4, c=1, h=5)
    y = colour(x, AugmentConfig(jitter_prob=0.0, grayscale=0.0, solarize=1.0), gen())
    torch.testing.assert_close(y, torch.where(x >= 0.5, 1 - x, x))


# --- single adjustments ---------------------------------------------------------------------
def test_grey_luma():
    x = torch.zeros(1, 3, 1, 1)
    x[0, :, 0, 0] = torch.tensor([1.0, 0.5, 0.0])
    assert grey(x).item() == pytest.approx(0.299 + 0.587 * 0.5)
    g1 = images(c=1)
    assert grey(g1) is g1


@pytest.mark.parametrize("c", [1, 3])
def test_brightness_factor_one_is_identity(c):
    x = images(c=c)
    torch.testing.assert_close(adjust_brightness(x, torch.ones(3)), x)


def test_brightness_scales_and_clamps():
    x = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2)
    torch.testing.assert_close(adjust_brightness(x, torch.tensor([2.0])), torch.tensor([0.4, 1.0]).view(1, 1, 1, 2))


@pytest.mark.parametrize("c", [1, 3])
def test_contrast_zero_gives_constant_image_per_sample(c):
    x = images(n=4, c=c)
    y = adjust_contrast(x, torch.zeros(4))
    flat = y.reshape(4, -1)
    torch.testing.assert_close(flat, flat[:, :1].expand_as(flat))
    torch.testing.assert_close(flat[:, 0], grey(x).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(adjust_contrast(x, torch.ones(4)), x)


def test_saturation_zero_gives_equal_channels():
    x = images(n=2, c=3)
    y = adjust_saturation(x, torch.zeros(2))
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, 0], y[:, 1])
    torch.testing.assert_close(y[:, 1], y[:, 2])
    torch.testing.assert_close(adjust_saturation(x, torch.ones(2)), x)


def test_hue_zero_is_identity():
    x = images(n=3, c=3)
    torch.testing.assert_close(adjust_hue(x, torch.zeros(3)), x, atol=1e-5, rtol=0)


def test_hue_keeps_grey_and_changes_colour():
    grey_img = torch.full((1, 3, 2, 2), 0.4)
    torch.testing.assert_close(adjust_hue(grey_img, torch.tensor([0.3])), grey_img, atol=1e-5, rtol=0)
    x = images(n=2, c=3)
    y = adjust_hue(x, torch.tensor([0.25, -0.25]))
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(y, x, atol=1e-3)
    # a full turn brings the colours back (where nothing was clipped)
    torch.testing.assert_close(adjust_hue(x, torch.tensor([1.0, -1.0])), x, atol=1e-4, rtol=0)


# --- views ----------------------------------------------------------------------------------
def test_augment_default_size_and_local():
    x = images(n=2, c=1, h=12)
    cfg = AugmentConfig()
    assert augment(x, cfg, gen()).shape == (2, 1, 12, 12)
    assert augment(x, cfg, gen(), size=6, local=True).shape == (2, 1, 6, 6)


def test_make_views_global_only():
    x = images(n=2, c=1, h=8)
    out = make_views(x, ViewSpec(), AugmentConfig(), gen())
    assert set(out) == {"views"}
    assert len(out["views"]) == 2
    assert all(v.shape == x.shape for v in out["views"])
    assert not torch.allclose(out["views"][0], out["views"][1])


def test_make_views_local_and_clean():
    x = images(n=2, c=3, h=8)
    cfg = AugmentConfig(local_crops=5, local_size=4)
    out = make_views(x, ViewSpec(global_views=3, local_views=2, clean=True), cfg, gen())
    assert len(out["views"]) == 3 and all(v.shape == (2, 3, 8, 8) for v in out["views"])
    assert len(out["local_views"]) == 2 and all(v.shape == (2, 3, 4, 4) for v in out["local_views"])
    assert torch.equal(out["clean"], x)


def test_make_views_local_count_from_config():
    x = images(n=2, c=1, h=28)
    cfg = AugmentConfig(local_crops=3, local_size=0)
    out = make_views(x, ViewSpec(local_views=-1), cfg, gen())
    # local_size 0: half the image size (at least 8)
    assert len(out["local_views"]) == 3 and all(v.shape == (2, 1, 14, 14) for v in out["local_views"])
    assert "clean" not in out


def test_make_views_seeded():
    x = images(n=2, c=3, h=8)
    cfg = AugmentConfig(local_crops=1, local_size=4)
    spec = ViewSpec(local_views=-1)
    a, b = make_views(x, spec, cfg, gen(5)), make_views(x, spec, cfg, gen(5))
    for va, vb in zip(a["views"] + a["local_views"], b["views"] + b["local_views"]):
        assert torch.equal(va, vb)


def test_augment_config_from_params():
    import yaml

    from conftest import PARAMS_YAML

    p = yaml.safe_load(PARAMS_YAML.read_text())["augment"]
    cfg = AugmentConfig.from_params(p)
    assert isinstance(cfg.crop_scale, tuple) and cfg.crop_scale == tuple(p["crop_scale"])
    assert cfg.flip == p["flip"]
    hash(cfg)  # frozen dataclass with tuples stays hashable
