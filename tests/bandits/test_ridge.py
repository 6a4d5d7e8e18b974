"""Exact incremental ridge: θ and A⁻¹ against the closed form, forgetting."""

from __future__ import annotations

import numpy as np
import pytest
from banditdata import make_stream, rel_err, ridge

from bandits.ridge import RidgeModel

D, LAM = 6, 0.7


def feed(model: RidgeModel, X: np.ndarray, r: np.ndarray, sizes: list[int]) -> None:
    i = 0
    for s in sizes:
        model.update(X[i:i + s], r[i:i + s])
        i += s
    assert i == len(X)


@pytest.mark.parametrize("sizes", [[1] * 40, [3, 1, 5, 1, 1, 2, 10, 1, 16], [40], [2] * 20])
def test_theta_equals_closed_form_ridge(sizes):
    X, r = make_stream(0, 40, D)
    m = RidgeModel(D, LAM, feature_space="fs")
    feed(m, X, r, sizes)
    assert rel_err(m.theta, ridge(X, r, LAM)) < 1e-8
    assert rel_err(m.a_inv, np.linalg.inv(LAM * np.eye(D) + X.T @ X)) < 1e-8
    assert m.n == 40


def test_sherman_morrison_path_equals_batch_path():
    X, r = make_stream(1, 25, D)
    single = RidgeModel(D, LAM, feature_space="fs")
    batch = RidgeModel(D, LAM, feature_space="fs")
    feed(single, X, r, [1] * 25)
    batch.update(X, r)
    assert rel_err(single.theta, batch.theta) < 1e-10
    assert rel_err(single.a_inv, batch.a_inv) < 1e-10
    np.testing.assert_allclose(single.xtx, batch.xtx, rtol=1e-12)


def test_woodbury_path_equals_batch_path():
    X, r = make_stream(2, 20, D)
    wood = RidgeModel(D, LAM, feature_space="fs")
    feed(wood, X, r, [4] * 5)  # 4 < d: Woodbury
    assert wood.since_refactor == 20
    assert rel_err(wood.theta, ridge(X, r, LAM)) < 1e-10


def test_long_stream_with_periodic_refactorisation_stays_exact():
    X, r = make_stream(3, 3000, D)
    m = RidgeModel(D, 1.0, feature_space="fs", refactor_every=256)
    for i in range(len(X)):
        m.update(X[i:i + 1], r[i:i + 1])
    assert m.since_refactor < 256
    assert rel_err(m.theta, ridge(X, r, 1.0)) < 1e-8


def test_widths_are_mahalanobis_norms():
    X, r = make_stream(4, 30, D)
    m = RidgeModel(D, LAM, feature_space="fs")
    m.update(X, r)
    A_inv = np.linalg.inv(LAM * np.eye(D) + X.T @ X)
    Q = make_stream(5, 7, D)[0]
    expected = np.sqrt([q @ A_inv @ q for q in Q])
    np.testing.assert_allclose(m.widths(Q), expected, rtol=1e-10)


@pytest.mark.parametrize("sizes", [[1] * 30, [5, 1, 12, 2, 10], [30]])
def test_forgetting_equals_discounted_sums(sizes):
    gamma = 0.9
    X, r = make_stream(6, 30, D)
    m = RidgeModel(D, LAM, gamma, feature_space="fs")
    feed(m, X, r, sizes)
    w = gamma ** np.arange(29, -1, -1)
    S = (X * w[:, None]).T @ X
    c = (X * w[:, None]).T @ r
    np.testing.assert_allclose(m.xtx, S, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.xty, c, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.A, LAM * np.eye(D) + S, rtol=1e-12, atol=1e-12)
    assert rel_err(m.theta, np.linalg.solve(LAM * np.eye(D) + S, c)) < 1e-10
    np.testing.assert_allclose(m.own_xtx, S, rtol=1e-12, atol=1e-12)


def test_state_round_trip_is_exact():
    X, r = make_stream(7, 11, D)
    m = RidgeModel(D, LAM, feature_space="fs")
    feed(m, X, r, [1, 1, 9])
    params, arrays = m.get_state()
    m2 = RidgeModel(D, LAM, feature_space="fs")
    m2.set_state(params, arrays)
    for name in RidgeModel.ARRAYS:
        assert getattr(m2, name).tobytes() == getattr(m, name).tobytes()
    assert m2.theta.tobytes() == m.theta.tobytes()
