"""The serving view of a hybrid policy against the joint ridge posterior, in closed form."""

from __future__ import annotations

import numpy as np
import pytest
from test_hybrid import ZCOLS, D, hybrid_stream, joint_system, learn

from bandits import (
    HybridLinUCB,
    HybridServing,
    HybridTS,
    InvalidInput,
    dump_snapshot,
    load_snapshot,
)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("z", ["bias", ZCOLS])
def test_means_are_exact_and_item_covariances_are_the_joint_inverse_blocks(seed, z):
    X, r, ids = hybrid_stream(seed, 80)
    p = HybridLinUCB(dim=D, alpha=0.7, z=z, lam=0.5, feature_space="fs")
    learn(p, X, r, ids)
    view = p.serving_view()
    items = sorted(set(ids))
    P, _ = joint_system(X, r, [np.array(ids) == a for a in items], z, 0.5)
    cov = np.linalg.inv(P)
    k = 1 if z == "bias" else len(z)
    # β's marginal covariance is Ã⁻¹, each θ_a's the item's diagonal block of P⁻¹
    linv = view._linv
    np.testing.assert_allclose(linv.T @ linv, cov[:D, :D], rtol=1e-8, atol=1e-12)
    for j, a in enumerate(items):
        C = view._chol[view._slots[a]]
        block = cov[D + j * k:D + (j + 1) * k, D + j * k:D + (j + 1) * k]
        np.testing.assert_allclose(C @ C.T, block, rtol=1e-8, atol=1e-12)
    Q, _, _ = hybrid_stream(seed + 10, 8)
    cand = [items[0], items[2], "unseen", items[0], "unseen2", items[1], items[3], items[4]]
    np.testing.assert_allclose(view.predict(Q, cand), p.predict(Q, cand), rtol=1e-9,
                               atol=1e-12)
    # the served width is sqrt(φᵀΣ_ββφ) + sqrt(zᵀΣ_aa z) from the joint inverse's blocks
    # (an unseen item's block is the prior I/λ), which bounds the exact width from above
    Zq = np.ones((len(cand), 1)) if z == "bias" else Q[:, z]
    item_var = [Zq[n] @ (cov[D + items.index(a) * k:D + (items.index(a) + 1) * k,
                             D + items.index(a) * k:D + (items.index(a) + 1) * k]
                         if a in items else np.eye(k) / 0.5) @ Zq[n]
                for n, a in enumerate(cand)]
    shared_var = np.einsum("ij,jk,ik->i", Q, cov[:D, :D], Q)
    exact, served = p.widths(Q, cand), view.widths(Q, cand)
    np.testing.assert_allclose(served, np.sqrt(shared_var) + np.sqrt(item_var), rtol=1e-8)
    assert np.all(served >= exact - 1e-12)
    np.testing.assert_allclose(view.score(Q, cand), view.predict(Q, cand) + 0.7 * served)


def test_ts_view_draws_have_the_marginal_means_and_covariances():
    X, r, ids = hybrid_stream(3, 60)
    p = HybridTS(dim=D, v=0.5, z=ZCOLS, lam=1.0, mc_samples=50, seed=0, feature_space="fs")
    learn(p, X, r, ids)
    view = p.serving_view()
    assert view.exploration == "ts" and view.v == 0.5
    Q, _, _ = hybrid_stream(13, 3)
    cand = ["i0", "i1", "unseen"]
    samples = view._sampler(Q, cand, np.random.default_rng(1))(40_000)
    Z = Q[:, ZCOLS]
    _, _, C = view._parts(Q, cand)
    np.testing.assert_allclose(samples.mean(axis=1), p.predict(Q, cand), atol=0.02)
    var = (view.v * np.linalg.norm(Q @ view._linv.T, axis=1)) ** 2 + \
        (view.v * np.linalg.norm(np.einsum("nkl,nk->nl", C, Z), axis=1)) ** 2
    np.testing.assert_allclose(samples.var(axis=1), var, rtol=0.05)
    slate = view.select(Q, k=2, item_ids=cand, rng=np.random.default_rng(0))
    assert len(slate.indices) == 2 and np.all((slate.propensities > 0)
                                              & (slate.propensities <= 1))


def test_view_round_trips_through_a_signed_snapshot_and_does_not_learn():
    X, r, ids = hybrid_stream(5, 50)
    p = HybridLinUCB(dim=D, alpha=0.3, z=ZCOLS, lam=1.0, feature_space="fs", seed=0)
    learn(p, X, r, ids)
    view = p.serving_view()
    back = load_snapshot(dump_snapshot(view, key=b"k", version=4), key=b"k")
    assert isinstance(back, HybridServing) and back.item_ids == view.item_ids
    assert back.n_updates == p.n_updates == 50
    Q, _, _ = hybrid_stream(6, 5)
    cand = ["i0", "i1", "i2", "nope", "i4"]
    np.testing.assert_array_equal(back.score(Q, cand), view.score(Q, cand))
    with pytest.raises(InvalidInput, match="does not learn"):
        back.update(Q, np.zeros(5), cand)
    with pytest.raises(InvalidInput, match="does not merge"):
        back.merge(p.stats)


def test_a_view_is_a_fraction_of_the_policy():
    rng = np.random.default_rng(0)
    d, n = 64, 400
    X = rng.normal(size=(n, d))
    X[:, -1] = 1.0
    p = HybridLinUCB(dim=d, z=list(range(54, 64)), feature_space="fs")
    p.update(X, rng.random(n), [f"i{j}" for j in range(n)])
    full = len(dump_snapshot(p, key=b"k", version=1))
    served = len(dump_snapshot(p.serving_view(), key=b"k", version=1))
    assert served < full / 5
