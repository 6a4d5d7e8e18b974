import numpy as np
import pytest

from learners import Adapter, Encoder, FeatureMap

pytestmark = pytest.mark.model

TITLES = [
    "Star Wars (1977) Action Adventure Romance Sci-Fi War",
    "Return of the Jedi (1983) Action Adventure Romance Sci-Fi War",
    "Sense and Sensibility (1995) Drama Romance",
    "Toy Story (1995) Animation Children's Comedy",
]


def test_construction_is_lazy(tmp_path):
    enc = Encoder(cache_dir=tmp_path, device="cpu")
    assert not enc.model_loaded and enc.texts_encoded == 0
    assert enc.dim == 384 and "MiniLM-L6-v2" in enc.model_id


def test_unit_norm_float32_deterministic(encoder):
    E = encoder.embed(TITLES)
    assert E.shape == (4, 384) and E.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)
    other = encoder.with_cache_dir(None)  # same model, no cache: recomputes
    before = other.texts_encoded
    E2 = other.embed(TITLES[::-1])[::-1]
    assert other.texts_encoded - before == 4
    np.testing.assert_allclose(E, E2, atol=1e-5)


def test_similar_titles_are_nearer(encoder):
    sw, jedi, sense = encoder.embed(
        ["Star Wars (1977)", "Return of the Jedi (1983)", "Sense and Sensibility (1995)"]
    )
    assert sw @ jedi > sw @ sense
    assert sw @ jedi > jedi @ sense


def test_cache_hits_do_no_model_work(encoder, tmp_path):
    enc = encoder.with_cache_dir(tmp_path)
    texts = [f"Cache probe {i} (1999) Drama" for i in range(5)]
    first = enc.embed(texts + texts[:2])  # duplicates inside a call are embedded once
    assert enc.texts_encoded == 5
    again = enc.embed(texts)
    assert enc.texts_encoded == 5 and enc.cache_hits >= 5
    np.testing.assert_array_equal(first[:5], again)
    shards = list((tmp_path).rglob("shard-*.safetensors"))
    assert shards and not list(tmp_path.rglob(".tmp-*"))

    fresh = Encoder(cache_dir=tmp_path, device="cpu")  # a restart / second worker
    got = fresh.embed(texts[::-1])
    assert fresh.texts_encoded == 0 and not fresh.model_loaded
    np.testing.assert_array_equal(got, again[::-1])


def test_second_worker_sees_new_shards_and_compact(encoder, tmp_path):
    a, b = encoder.with_cache_dir(tmp_path), Encoder(cache_dir=tmp_path, device="cpu")
    b.embed([])  # b has looked at the (empty) cache already
    a.embed(["Written by worker A (2001)"])
    a.embed(["Another one from A (2002)"])
    b.embed(["Written by worker A (2001)", "Another one from A (2002)"])
    assert b.texts_encoded == 0
    assert a.compact() == 2
    assert len(list(tmp_path.rglob("shard-*.safetensors"))) == 1
    c = Encoder(cache_dir=tmp_path, device="cpu")
    c.embed(["Another one from A (2002)"])
    assert c.texts_encoded == 0


def test_rejects_bad_input(tmp_path):
    enc = Encoder(cache_dir=tmp_path, device="cpu")
    with pytest.raises(TypeError):
        enc.embed("not a list")
    with pytest.raises(TypeError):
        enc.embed([1, 2])


def test_new_catalog_item_gets_phi_without_interactions(encoder):
    catalog = encoder.embed(TITLES + [f"Filler movie {i} (1990) Comedy" for i in range(30)])
    fmap = FeatureMap(Adapter.from_pca(catalog, out_dim=FeatureMap.adapter_dim(64)), dim=64)
    new = encoder.embed(["Brand New Release (2024) Sci-Fi"])
    X = fmap.transform(new, np.zeros(384), {})
    assert X.shape == (1, 64) and np.all(np.isfinite(X))
    assert np.abs(X[0, : fmap.k_item]).sum() > 0  # content features alone
