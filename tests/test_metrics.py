"""Clustering metrics and the three frozen-feature protocols on hand-made inputs."""
from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from clusterssl.evaluate.metrics import cluster_accuracy, clustering_scores, matched_confusion
from clusterssl.evaluate.protocols import kmeans_clustering, knn, linear_probe
from clusterssl.knn import knn_predict, knn_predict_ks


# --- cluster accuracy -----------------------------------------------------------------------
def test_cluster_accuracy_invariant_to_relabelling():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    for perm in itertools.permutations(range(3)):
        clusters = np.array(perm)[labels]
        assert cluster_accuracy(labels, clusters) == 1.0
    # arbitrary, non-contiguous ids on both sides
    assert cluster_accuracy(np.array([5, 5, 7, 7, 9]), np.array([42, 42, 3, 3, -1])) == 1.0


def test_cluster_accuracy_hand_computed():
    labels = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([1, 1, 0, 2, 2, 2])
    # contingency (cluster x class): c1 = {0: 2}, c0 = {1: 1}, c2 = {1: 1, 2: 2}
    # best matching c1->0 (2), c0->1 (1), c2->2 (2): 5 of 6
    assert cluster_accuracy(labels, clusters) == pytest.approx(5 / 6)
    # everything in one cluster: only the largest class can be matched
    assert cluster_accuracy(np.array([0, 0, 0, 1, 2]), np.zeros(5, int)) == pytest.approx(3 / 5)


def test_cluster_accuracy_more_clusters_than_classes():
    labels = np.array([0, 0, 0, 1, 1, 1])
    clusters = np.array([0, 0, 1, 2, 2, 3])
    # c0->0 (2) and c2->1 (2); clusters 1 and 3 stay unmatched and count as errors
    assert cluster_accuracy(labels, clusters) == pytest.approx(4 / 6)


def test_cluster_accuracy_fewer_clusters_than_classes():
    labels = np.array([0, 1, 2, 0, 1, 2])
    clusters = np.array([0, 0, 1, 0, 0, 1])
    # c0 holds classes 0 and 1 twice each, c1 holds class 2 twice: best 2 + 2
    assert cluster_accuracy(labels, clusters) == pytest.approx(4 / 6)


# --- NMI / ARI ------------------------------------------------------------------------------
def _entropy(x):
    n = len(x)
    return -sum(c / n * math.log(c / n) for c in Counter(x).values())


def _nmi_arithmetic(a, b):
    n = len(a)
    joint = Counter(zip(a, b))
    pa, pb = Counter(a), Counter(b)
    mi = sum(c / n * math.log((c / n) / (pa[i] / n * pb[j] / n)) for (i, j), c in joint.items())
    return mi / ((_entropy(a) + _entropy(b)) / 2)


def _ari(a, b):
    c2 = lambda x: x * (x - 1) / 2
    n = len(a)
    index = sum(c2(c) for c in Counter(zip(a, b)).values())
    sa = sum(c2(c) for c in Counter(a).values())
    sb = sum(c2(c) for c in Counter(b).values())
    expected = sa * sb / c2(n)
    return (index - expected) / ((sa + sb) / 2 - expected)


def test_clustering_scores_perfect_for_permutation():
    labels = np.array([0, 1, 2, 0, 1, 2, 2])
    s = clustering_scores(labels, np.array([2, 0, 1])[labels])
    assert set(s) == {"acc", "nmi", "ari"}
    assert s["acc"] == 1.0
    assert s["nmi"] == pytest.approx(1.0)
    assert s["ari"] == pytest.approx(1.0)


def test_clustering_scores_known_values():
    labels = [0, 0, 1, 1, 2, 2]
    clusters = [1, 1, 0, 2, 2, 2]
    s = clustering_scores(np.array(labels), np.array(clusters))
    assert s["acc"] == pytest.approx(5 / 6)
    assert s["nmi"] == pytest.approx(_nmi_arithmetic(labels, clusters), rel=1e-9)
    assert s["ari"] == pytest.approx(_ari(labels, clusters), rel=1e-9)
    # and the same numbers scikit-learn gives
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters))
    assert s["ari"] == pytest.approx(adjusted_rand_score(labels, clusters))
    assert all(isinstance(v, float) for v in s.values())


def test_clustering_scores_random_assignment_low():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    s = clustering_scores(labels, rng.integers(0, 4, 200))
    assert s["ari"] < 0.1 and s["nmi"] < 0.1 and s["acc"] < 0.5


# --- k-NN -----------------------------------------------------------------------------------
def _unit(deg):
    r = math.radians(deg)
    return [math.cos(r), math.sin(r)]


def test_knn_predict_obvious_class():
    train_x = np.array([_unit(0), _unit(5), _unit(-5), _unit(90), _unit(95), _unit(85)])
    train_y = np.array([0, 0, 0, 1, 1, 1])
    test_x = np.array([_unit(2), _unit(88), [10.0, 0.5]])  # scale must not matter (cosine)
    pred = knn_predict(train_x, train_y, test_x, k=3, temperature=0.1)
    assert pred.tolist() == [0, 1, 0]
    res = knn(train_x, train_y, test_x, np.array([0, 1, 1]), ks=[1, 3], temperature=0.1)
    assert res == {"k1_top1": pytest.approx(2 / 3), "k3_top1": pytest.approx(2 / 3)}


def test_knn_similarity_weighting_changes_the_vote():
    # one very close neighbour of class 0, two farther ones of class 1 (cos 60 deg = 0.5)
    train_x = np.array([_unit(0), _unit(60), _unit(-60)])
    train_y = np.array([0, 1, 1])
    test_x = np.array([_unit(0)])
    # sharp weights exp(s / 0.1): class 0 gets e^10, class 1 gets 2 e^5 -> class 0
    assert knn_predict(train_x, train_y, test_x, k=3, temperature=0.1).tolist() == [0]
    # almost flat weights: the plain majority (class 1) wins
    assert knn_predict(train_x, train_y, test_x, k=3, temperature=100.0).tolist() == [1]


def test_knn_chunking_does_not_change_predictions():
    rng = np.random.default_rng(0)
    tx, ty = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    qx = rng.normal(size=(23, 5))
    a = knn_predict(tx, ty, qx, k=5, temperature=0.1, chunk=4)
    b = knn_predict(tx, ty, qx, k=5, temperature=0.1, chunk=1024)
    assert np.array_equal(a, b)
    # k larger than the training set is clipped
    assert knn_predict(tx[:3], ty[:3], qx, k=50, temperature=0.1).shape == (23,)


def test_knn_for_several_k_in_one_pass_equals_one_k_at_a_time():
    rng = np.random.default_rng(1)
    tx, ty = rng.normal(size=(300, 8)), rng.integers(0, 4, 300)
    qx = rng.normal(size=(57, 8))
    together = knn_predict_ks(tx, ty, qx, [50, 1, 7, 400], temperature=0.1, chunk=16)
    assert sorted(together) == [1, 7, 50, 400]
    sims = (qx / np.linalg.norm(qx, axis=1, keepdims=True)) @ (tx / np.linalg.norm(tx, axis=1, keepdims=True)).T
    for k, pred in together.items():  # against a plain reference: each query's own sort and vote
        expected = []
        for row in sims:
            nearest = np.argsort(-row)[:k]
            expected.append(np.bincount(ty[nearest], weights=np.exp(row[nearest] / 0.1), minlength=4).argmax())
        assert pred.tolist() == expected
    assert not np.array_equal(together[1], together[50])  # the ks are scored apart, not copied


# --- linear probe and k-means -------------------------------------------------------------
def _blobs(n_per, centres, spread, seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(c, spread, size=(n_per, len(c))) for c in centres])
    y = np.repeat(np.arange(len(centres)), n_per)
    return x.astype(np.float32), y


def test_linear_probe_separable_blobs():
    centres = [(4.0, 0.0, 0.0), (0.0, 4.0, 0.0), (0.0, 0.0, 4.0)]
    xtr, ytr = _blobs(30, centres, 0.4, seed=0)
    xte, yte = _blobs(10, centres, 0.4, seed=1)
    res = linear_probe(xtr, ytr, xte, yte, epochs=30, lr=0.05, weight_decay=0.0, batch_size=16, seed=0)
    assert set(res) == {"top1", "train_top1"}
    assert res["top1"] >= 0.99 and res["train_top1"] >= 0.99


def test_linear_probe_batch_larger_than_train_set():
    xtr, ytr = _blobs(5, [(3.0, 0.0), (-3.0, 0.0)], 0.2, seed=0)
    res = linear_probe(xtr, ytr, xtr, ytr, epochs=50, lr=0.1, weight_decay=0.0, batch_size=256, seed=0)
    assert res["top1"] == 1.0


def test_kmeans_recovers_separated_blobs():
    # separated in angle (the features are L2-normalised before k-means)
    centres = [(10.0, 0.0, 0.0), (0.0, 10.0, 0.0), (0.0, 0.0, 10.0), (-10.0, -10.0, 0.0)]
    x, y = _blobs(15, centres, 0.3, seed=0)
    res = kmeans_clustering(x, y, n_clusters=4, n_init=2, seed=0)
    assert res["acc"] == 1.0
    assert res["nmi"] == pytest.approx(1.0)
    assert res["ari"] == pytest.approx(1.0)


def test_select_and_probe_chooses_lr_on_validation_not_test():
    from clusterssl.evaluate.protocols import select_and_probe

    g = np.random.default_rng(0)
    centres = g.normal(size=(3, 5)) * 4
    ytr, yte = g.integers(0, 3, 300), g.integers(0, 3, 90)
    xtr, xte = centres[ytr] + g.normal(size=(300, 5)), centres[yte] + g.normal(size=(90, 5))
    res = select_and_probe(xtr, ytr, xte, yte, epochs=5, lrs=[1e-7, 0.1], weight_decay=0.0, batch_size=32, seed=0, val_fraction=0.2)
    assert res["lr"] == 0.1 and res["top1"] > 0.9
    assert set(res["val_top1"]) == {"1e-07", "0.1"} and res["val_top1"]["0.1"] > res["val_top1"]["1e-07"]
    # the choice never sees the test labels
    shuffled = select_and_probe(xtr, ytr, xte, g.permutation(yte), epochs=5, lrs=[1e-7, 0.1], weight_decay=0.0, batch_size=32, seed=0, val_fraction=0.2)
    assert shuffled["lr"] == 0.1 and shuffled["val_top1"] == res["val_top1"]
    single = select_and_probe(xtr, ytr, xte, yte, epochs=5, lrs=[0.1], weight_decay=0.0, batch_size=32, seed=0, val_fraction=0.2)
    assert single["val_top1"] == {} and single["top1"] == pytest.approx(res["top1"])


def test_matched_confusion_hand_computed():
    # clusters 7 -> class 0, 3 -> class 1, 5 -> class 2 (best matching); one class-1 image lands in cluster 7
    labels = np.array([0, 0, 1, 1, 1, 2])
    clusters = np.array([7, 7, 7, 3, 3, 5])
    assert matched_confusion(labels, clusters) == [[2, 0, 0], [1, 2, 0], [0, 0, 1]]
    # the diagonal is the matched count: ACC x n, for random assignments too
    rng = np.random.default_rng(0)
    y, c = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    assert np.trace(matched_confusion(y, c)) == round(cluster_accuracy(y, c) * 300)
    # more clusters than classes: the extra ones fall into an "unmatched" column, nothing is lost
    m = np.array(matched_confusion(np.array([0, 0, 1, 1]), np.array([0, 1, 2, 2])))
    assert m.shape == (2, 3) and m.sum() == 4 and m[:, 2].sum() == 1
