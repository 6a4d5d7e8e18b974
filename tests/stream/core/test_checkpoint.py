import os

import numpy as np
import pytest

from stream.core.checkpoint import Checkpoint, CheckpointError, read_checkpoint, write_checkpoint


def test_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(5, 5)), "blob": np.frombuffer(b"\x00\x01xyz", np.uint8)}
    ck = Checkpoint(offsets={0: 10, 3: 7}, header={"joiner": {"open": []}, "v": 2},
                    arrays=arrays)
    path = tmp_path / "c" / "ck.npz"
    write_checkpoint(path, ck)
    back = read_checkpoint(path)
    assert back.offsets == {0: 10, 3: 7}
    assert back.header == ck.header
    for name, value in arrays.items():
        assert back.arrays[name].tobytes() == value.tobytes()


def test_missing_is_none_and_garbage_is_an_error(tmp_path):
    assert read_checkpoint(tmp_path / "none.npz") is None
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.npz"):
        read_checkpoint(bad)


def test_replace_is_atomic_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "ck.npz"
    for i in range(3):
        write_checkpoint(path, Checkpoint(offsets={0: i}))
    assert read_checkpoint(path).offsets == {0: 2}
    assert os.listdir(tmp_path) == ["ck.npz"]
