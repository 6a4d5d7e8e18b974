"""The always-valid interval against its closed form, and its coverage under peeking."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.experiments.sequential import (
    ClusteredMoments,
    Moments,
    compare,
    half_width,
    mixture_ratio,
)


def test_half_width_closed_form():
    # V = 1e-4, τ² = 2.5e-3, α = 0.05: V(V+τ²)/τ² = 1.04e-4; log(26) + 2 log 20
    expected = math.sqrt(1.04e-4 * (math.log(26.0) + 2 * math.log(20.0)))
    assert half_width(1e-4, 2.5e-3, 0.05) == pytest.approx(expected, rel=1e-14)
    assert half_width(0.0, 1.0, 0.05) == 0.0


def test_the_interval_is_where_the_mixture_ratio_stays_below_one_over_alpha():
    var, tau2, alpha = 3e-4, 1e-3, 0.05
    w = half_width(var, tau2, alpha)
    assert mixture_ratio(w, var, tau2) == pytest.approx(1 / alpha, rel=1e-9)
    assert mixture_ratio(0.99 * w, var, tau2) < 1 / alpha < mixture_ratio(1.01 * w, var, tau2)


def test_clustered_variance_closed_form_and_the_iid_case():
    rng = np.random.default_rng(7)
    users = rng.integers(0, 40, 1000)
    x = rng.random(1000)
    m = ClusteredMoments()
    for u, v in zip(users.tolist(), x.tolist(), strict=True):
        m.add(str(u), v)
    mu = x.mean()
    S = np.bincount(users, weights=x, minlength=40)
    n = np.bincount(users, minlength=40).astype(float)
    U = int((n > 0).sum())
    expected = U / (U - 1) * ((S - n * mu) ** 2).sum() / len(x) ** 2
    assert m.mean == pytest.approx(mu, rel=1e-12)
    assert m.var_of_mean == pytest.approx(expected, rel=1e-9)
    # one impression per user: the usual s²/n (up to the U/(U-1) vs n/(n-1) match)
    iid, plain = ClusteredMoments(), Moments()
    for i, v in enumerate(x.tolist()):
        iid.add(f"u{i}", v)
        plain.add(v)
    assert iid.var_of_mean == pytest.approx(plain.var_of_mean, rel=1e-9)


def test_compare_is_unbounded_before_two_users():
    a, b = ClusteredMoments(), ClusteredMoments()
    a.add("u", 1.0)
    b.add("v", 0.0)
    c = compare(a, b, 0.01, 0.05)
    assert c.lower == -math.inf and c.upper == math.inf and not c.decided


def test_coverage_under_continuous_monitoring():
    """Gaussian data, a true difference of 0.1, a look after every unit: the interval
    misses the truth at *some* look in at most α of 200 seeded runs."""
    misses = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        a, b = Moments(), Moments()
        missed = False
        for t in range(400):
            a.add(rng.normal(0.6, 0.5))
            b.add(rng.normal(0.5, 0.5))
            if t >= 2:
                c = compare(a, b, tau2=0.01, alpha=0.05)
                if not c.lower <= 0.1 <= c.upper:
                    missed = True
                    break
        misses += missed
    assert misses / 200 <= 0.05, misses
