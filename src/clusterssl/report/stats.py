"""Seed statistics for the report: a Student-t interval of a mean over seeds, and the paired
difference of two methods over the same seeds (same data splits, same evaluation seed).

With one seed there is no spread to estimate: the interval is (nan, nan) and no difference is
called significant, so the report never claims an interval it did not measure."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def t_interval(values, confidence: float = 0.95) -> dict:
    """Mean of `values` with its two-sided Student-t confidence interval (n - 1 degrees of freedom)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "low": math.nan, "high": math.nan}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": math.nan, "low": math.nan, "high": math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half}


def paired_difference(a, b, confidence: float = 0.95) -> dict:
    """a - b over the seeds both have: the mean difference, its t interval, the paired t-test's
    p-value and whether the interval excludes zero (False when it cannot be computed)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same seeds: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = t_interval(a[keep] - b[keep], confidence)
    p = math.nan
    if d["n"] >= 2:
        if d["std"] == 0:  # identical differences: scipy's t statistic is undefined
            p = 1.0 if d["mean"] == 0 else 0.0
        else:
            p = float(stats.ttest_rel(a[keep], b[keep]).pvalue)
    excludes = bool(d["n"] >= 2 and (d["low"] > 0 or d["high"] < 0))
    return {**d, "p_value": p, "excludes_zero": excludes}
