"""Seed statistics of the report: Student-t intervals and paired differences, against scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from clusterssl.report.stats import paired_difference, t_interval


def test_t_interval_matches_scipy():
    x = [84.71, 85.20, 84.10]
    r = t_interval(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert r["n"] == 3 and r["mean"] == pytest.approx(np.mean(x))
    assert r["std"] == pytest.approx(np.std(x, ddof=1))
    assert (r["low"], r["high"]) == (pytest.approx(lo), pytest.approx(hi))


def test_t_interval_known_value():
    # mean 2, sd 1, n 3: half-width t_{0.975, 2} / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    r = t_interval([1.0, 2.0, 3.0])
    assert r["low"] == pytest.approx(2 - 2.484138, abs=1e-6) and r["high"] == pytest.approx(2 + 2.484138, abs=1e-6)


def test_t_interval_one_seed_claims_nothing():
    r = t_interval([84.7])
    assert r["n"] == 1 and r["mean"] == 84.7
    assert math.isnan(r["std"]) and math.isnan(r["low"]) and math.isnan(r["high"])


def test_t_interval_ignores_missing_values():
    assert t_interval([1.0, float("nan"), 3.0])["n"] == 2
    assert t_interval([])["n"] == 0


def test_paired_difference_matches_scipy_ttest_rel():
    a, b = np.array([85.1, 84.2, 86.0, 85.5]), np.array([84.0, 84.1, 85.2, 84.6])
    r = paired_difference(a, b)
    d = a - b
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert r["mean"] == pytest.approx(d.mean())
    assert (r["low"], r["high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert r["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert r["excludes_zero"] == (lo > 0)


def test_paired_beats_unpaired_when_seeds_share_noise():
    # a seed-level shift common to both methods cancels in the paired difference
    shift = np.array([0.0, 3.0, -3.0])
    a, b = 80 + shift + 0.5, 80 + shift + np.array([0.0, 0.1, -0.1])
    assert paired_difference(a, b)["excludes_zero"]
    assert not stats.ttest_ind(a, b).pvalue < 0.05


def test_paired_difference_interval_containing_zero_is_not_significant():
    r = paired_difference([1.0, 2.0, 3.0], [2.0, 1.0, 3.0])
    assert r["low"] < 0 < r["high"] and not r["excludes_zero"]


def test_paired_difference_one_seed_and_constant_differences():
    one = paired_difference([85.0], [84.0])
    assert one["n"] == 1 and not one["excludes_zero"] and math.isnan(one["p_value"])
    const = paired_difference([2.0, 3.0], [1.0, 2.0])
    assert const["low"] == const["high"] == 1.0 and const["excludes_zero"] and const["p_value"] == 0.0
    same = paired_difference([2.0, 3.0], [2.0, 3.0])
    assert not same["excludes_zero"] and same["p_value"] == 1.0


def test_paired_difference_needs_the_same_seeds():
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])
