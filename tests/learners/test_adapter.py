import numpy as np
import torch

from learners import Adapter


def _catalog(n=400, d=384, seed=0):
    rng = np.random.default_rng(seed)
    E = rng.normal(size=(n, 16)) @ rng.normal(size=(16, d)) + 0.1 * rng.normal(size=(n, d))
    return (E / np.linalg.norm(E, axis=1, keepdims=True)).astype(np.float32)


def test_pca_init_is_whitened_projection():
    E = _catalog()
    a = Adapter.from_pca(E, out_dim=10)
    with torch.no_grad():
        Z = a(torch.from_numpy(E)).double().numpy()
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(Z.T), np.eye(10), atol=1e-3)


def test_deterministic_and_round_trip():
    E = _catalog()
    a, b = Adapter.from_pca(E, out_dim=12, seed=3, hidden=16), Adapter.from_pca(E, 12, seed=3,
                                                                               hidden=16)
    assert a.to_bytes() == b.to_bytes()
    c = Adapter.from_bytes(a.to_bytes())
    assert c.hidden == 16 and c.out_dim == 12 and c.in_dim == 384
    x = torch.from_numpy(E[:5])
    assert torch.equal(a(x), c(x))


def test_residual_mlp_starts_at_zero():
    E = _catalog()
    lin = Adapter.from_pca(E, out_dim=8)
    res = Adapter.from_pca(E, out_dim=8, hidden=32)
    x = torch.from_numpy(E[:20])
    with torch.no_grad():
        assert torch.allclose(lin(x), res(x))
    assert res.numpy_params()[2] is None  # zero MLP is skipped in numpy


def test_pca_more_outputs_than_rank_and_big_catalog_sample():
    E = _catalog(n=5)
    a = Adapter.from_pca(E, out_dim=8)
    with torch.no_grad():
        assert torch.isfinite(a(torch.from_numpy(E))).all()
    big = _catalog(n=300)
    s1 = Adapter.from_pca(big, out_dim=4, max_rows=100, seed=1).to_bytes()
    assert s1 == Adapter.from_pca(big, out_dim=4, max_rows=100, seed=1).to_bytes()
