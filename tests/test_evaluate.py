"""Semi-supervised and transfer evaluation: class-balanced label subsets, fine-tuning that never
sees test data when it chooses, image-shape matching for transfer, and the linear probe
against scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clusterssl.data.splits import class_balanced_subset, load_split, write_split
from clusterssl.evaluate.features import match_shape
from clusterssl.evaluate.protocols import select_and_probe
from clusterssl.io import UserError


# --- label subsets ------------------------------------------------------------------------------
def test_subset_is_class_balanced_and_the_right_size():
    labels = np.repeat(np.arange(10), [600, 610, 590, 600, 605, 595, 600, 600, 600, 600])
    for fraction in (0.01, 0.1):
        idx = class_balanced_subset(labels, fraction, seed=0)
        counts = np.bincount(labels[idx], minlength=10)
        assert (counts == counts[0]).all(), counts
        assert counts[0] == round(fraction * len(labels) / 10)
        assert len(np.unique(idx)) == len(idx) and (np.diff(idx) > 0).all()


def test_subset_is_deterministic_per_seed_and_differs_across_seeds():
    labels = np.arange(5000) % 10
    a, b = class_balanced_subset(labels, 0.01, 3), class_balanced_subset(labels, 0.01, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, class_balanced_subset(labels, 0.01, 4))


def test_subset_keeps_one_image_per_class_at_least_and_refuses_impossible_fractions():
    labels = np.array([0] * 50 + [1] * 3)
    assert np.bincount(labels[class_balanced_subset(labels, 0.001, 0)]).tolist() == [1, 1]
    with pytest.raises(UserError, match="eval.semisup.fractions"):
        class_balanced_subset(labels, 0.5, 0)  # 13 per class, class 1 has 3


def test_split_file_round_trip_and_bad_files(tmp_path):
    labels = np.arange(200) % 4
    f = write_split(labels, 0.1, 0, tmp_path / "s" / "semisup_0.1_seed0.npy")
    assert np.array_equal(load_split(f, 200), class_balanced_subset(labels, 0.1, 0))
    with pytest.raises(UserError, match="does not index"):
        load_split(f, 10)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(UserError, match="not a label-subset file"):
        load_split(tmp_path / "junk.npy", 200)
    with pytest.raises(UserError, match="clusterssl data split"):
        load_split(tmp_path / "missing.npy", 200)


# --- fine-tuning --------------------------------------------------------------------------------
def _pattern_images(n, seed, num_classes=3, size=8):
    """Class c lights up row block c: learnable by a small conv net in a few steps."""
    g = np.random.default_rng(seed)
    y = g.integers(0, num_classes, n)
    x = g.integers(0, 60, (n, 1, size, size))
    for i, c in enumerate(y):
        x[i, 0, c * size // num_classes : (c + 1) * size // num_classes] += 180
    return torch.from_numpy(x.astype(np.uint8)), torch.from_numpy(y)


SEMISUP_CFG = {"steps": 30, "batch_size": 32, "lr": [1e-6, 0.05], "head_lr_scale": 1.0, "val_fraction": 0.25,
               "weight_decay": 0.0, "crop_scale": [0.8, 1.0], "flip": 0.0}


def test_finetuning_chooses_on_the_labelled_subset_never_on_test(tiny_backbone):
    from clusterssl.evaluate.semisup import select_and_finetune

    xtr, ytr = _pattern_images(96, 0)
    xte, yte = _pattern_images(60, 1)
    mean, std = torch.tensor([0.4]), torch.tensor([0.3])
    run = lambda xt, yt: select_and_finetune(tiny_backbone(), xtr, ytr, xt, yt, 3, mean, std, SEMISUP_CFG, seed=0, amp=False, eval_batch=64)
    res = run(xte, yte)
    assert res["lr"] == 0.05 and res["val_top1"]["0.05"] > res["val_top1"]["1e-06"]
    assert res["top1"] > 0.8, res
    # shuffled test labels, or test images replaced by noise: every choice stays the same
    shuffled = run(xte, yte[torch.randperm(len(yte), generator=torch.Generator().manual_seed(0))])
    noise = run(torch.randint(0, 255, xte.shape, dtype=torch.uint8), yte)
    for other in (shuffled, noise):
        assert other["lr"] == res["lr"] and other["val_top1"] == res["val_top1"] and other["train_top1"] == res["train_top1"]


def test_finetuning_trains_the_backbone_and_leaves_the_callers_copy_alone(tiny_backbone):
    from clusterssl.evaluate.semisup import select_and_finetune

    backbone = tiny_backbone()
    backbone.requires_grad_(False)  # an EMA teacher arrives frozen: fine-tuning must still train it
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    xtr, ytr = _pattern_images(64, 0)
    cfg = dict(SEMISUP_CFG, lr=[0.05])
    res = select_and_finetune(backbone, xtr, ytr, xtr, ytr, 3, torch.tensor([0.4]), torch.tensor([0.3]), cfg, 0, False, 64)
    assert res["val_top1"] == {} and res["train_top1"] > 0.8
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_finetuning_in_channels_last_trains_in_that_layout_and_chooses_as_contiguous_does(tiny_backbone):
    from clusterssl.evaluate.semisup import finetune, select_and_finetune

    xtr, ytr = _pattern_images(96, 0)
    xte, yte = _pattern_images(60, 1)
    mean, std = torch.tensor([0.4]), torch.tensor([0.3])
    model = finetune(tiny_backbone(), xtr, ytr, 3, mean, std, SEMISUP_CFG, 0.05, 0, False, torch.channels_last)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    run = lambda fmt: select_and_finetune(tiny_backbone(), xtr, ytr, xte, yte, 3, mean, std, SEMISUP_CFG, 0, False, 64, memory_format=fmt)
    ours, plain = run(torch.channels_last), run(None)
    # the same arithmetic in another layout: other kernels, equal up to rounding
    assert ours["lr"] == plain["lr"] == 0.05 and abs(ours["top1"] - plain["top1"]) <= 0.05, (ours, plain)


@pytest.mark.parametrize("channels_last, expected", [(True, torch.channels_last), (False, torch.contiguous_format)])
def test_semisup_fine_tunes_in_the_layout_pretraining_trains_in(tmp_path, monkeypatch, channels_last, expected):
    from clusterssl import data, paths
    from clusterssl.config import validate
    from clusterssl.data.splits import write_split
    from clusterssl.evaluate import semisup
    from conftest import preset_params

    params = preset_params("tiny")
    params["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    params["pretrain"]["channels_last"] = channels_last
    validate(params)
    data.fetch("digits", paths.raw_dir(params, "digits"))
    prepared = data.prepare("digits", paths.raw_dir(params, "digits"), paths.prepared_dir(params, "digits"))
    write_split(data.load_prepared(prepared, "train").labels, 0.1, 0, paths.split_file(params, "digits", 0.1, 0))
    asked = []
    monkeypatch.setattr(semisup, "select_and_finetune", lambda *a, memory_format=None, **k: asked.append(memory_format) or {"top1": 0.0})
    semisup.semisup(params, paths.SCRATCH, 0, 0.1, threads=1)
    assert asked == [expected]


# --- transfer -----------------------------------------------------------------------------------
def test_match_shape_resizes_and_converts_channels():
    grey8 = np.full((2, 8, 8, 1), 200, np.uint8)
    up = match_shape(grey8, [28, 28, 3])
    assert up.shape == (2, 28, 28, 3) and up.dtype == np.uint8 and (up == 200).all()
    rgb = np.zeros((1, 32, 32, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: luma 0.299
    down = match_shape(rgb, [28, 28, 1])
    assert down.shape == (1, 28, 28, 1) and (down == 76).all()
    same = np.arange(28 * 28, dtype=np.uint8).reshape(1, 28, 28, 1)
    assert match_shape(same, [28, 28, 1]) is same


# --- the linear probe against scikit-learn ------------------------------------------------------
def test_linear_probe_within_one_point_of_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    g = np.random.default_rng(0)
    centres = g.normal(size=(10, 64)) * 0.35
    ytr, yte = g.integers(0, 10, 4000), g.integers(0, 10, 2000)
    xtr = (centres[ytr] + g.normal(size=(4000, 64))).astype(np.float32)
    xte = (centres[yte] + g.normal(size=(2000, 64))).astype(np.float32)
    scaler = StandardScaler().fit(xtr)
    ref = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(xtr), ytr).score(scaler.transform(xte), yte)
    ours = select_and_probe(xtr, ytr, xte, yte, epochs=30, lrs=[0.001, 0.01], weight_decay=1e-4, batch_size=256, seed=0, val_fraction=0.1)["top1"]
    assert 0.3 < ref < 0.95, "the problem must be neither trivial nor hopeless"
    assert abs(ours - ref) <= 0.01, (ours, ref)


def test_finetuning_bf16_autocast_path_on_the_available_device(tiny_backbone):
    """The GPU path (bf16 autocast; CUDA tensors when a GPU is present) of semi-supervised
    fine-tuning, also run on the CPU so that CI without a GPU covers it."""
    from clusterssl.evaluate.semisup import select_and_finetune

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    xtr, ytr = (t.to(device) for t in _pattern_images(96, 0))
    mean, std = torch.tensor([0.4], device=device), torch.tensor([0.3], device=device)
    res = select_and_finetune(tiny_backbone().to(device), xtr, ytr, xtr, ytr, 3, mean, std, dict(SEMISUP_CFG, lr=[0.05]), 0, True, 64)
    assert res["train_top1"] > 0.8, res


@pytest.mark.parametrize("split, n", [("test", 30), ("train", 60), ("train+test", 90)])
def test_clustering_fits_and_scores_the_split_the_protocol_names(split, n):
    from clusterssl.evaluate.run import _cluster

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 5)) * 10

    def part(m):
        y = np.arange(m) % 3
        return (centres[y] + rng.normal(size=(m, 5))).astype(np.float32), y, (y + 1) % 3

    f = {}
    for p, m in (("train", 60), ("test", 30)):
        f[f"{p}_features"], f[f"{p}_labels"], f[f"{p}_head_clusters"] = part(m)
    result = _cluster(f, {"cluster": {"n_init": 2, "split": split}}, seed=0)
    assert sum(map(sum, result["kmeans"]["confusion"])) == n  # every sample of the split, no other
    assert result["kmeans"]["acc"] == 1.0 and result["head"]["acc"] == 1.0
