"""The checkpointer on real files and a real learning state (no broker)."""

import threading
from pathlib import Path

import pytest

from stream.core.catalog import Catalog
from stream.core.checkpoint import read_checkpoint
from stream.exceptions import CheckpointError, FairstreamError
from stream.kafka.producers import catalog_items
from stream.metrics import Metrics
from stream.settings import load_settings
from stream.worker.checkpointer import Checkpointer


@pytest.fixture
def setup(movielens, encoder, data_cache, tmp_path):
    settings = load_settings().replace(data={"cache_dir": data_cache},
                                       worker={"checkpoint_path": str(tmp_path / "ck.npz")})
    catalog = Catalog(encoder.dim)
    catalog.add(catalog_items(movielens), encoder)
    return settings, catalog


class _Settled:
    """A sink that notes whether the checkpoint file existed when it was settled."""

    def __init__(self, path):
        self.path, self.seen = path, []

    def settle(self):
        self.seen.append(self.path.exists())


def test_settles_before_writing_then_commits_what_it_wrote(setup):
    settings, catalog = setup
    sink = _Settled(Path(settings.worker.checkpoint_path))
    ck = Checkpointer(settings, Metrics(), acked=[sink])
    state = ck.restore(catalog)
    committed = []
    written = ck.checkpoint(state, lock=threading.Lock(), commit=committed.append)
    assert sink.seen == [False]  # settled before the file was there
    assert committed == [written.offsets]
    assert read_checkpoint(ck.path).header["version"] == 0


def test_restore_skips_every_published_version(setup):
    settings, catalog = setup
    ck = Checkpointer(settings, Metrics())
    state = ck.restore(catalog)
    ck.checkpoint(state, lock=threading.Lock())
    ck.record_published(5)  # published after the checkpoint, then a crash
    assert Checkpointer(settings, Metrics()).restore(catalog).next_version() == 6


def test_a_garbled_version_record_is_a_checkpoint_error(setup):
    settings, catalog = setup
    ck = Checkpointer(settings, Metrics())
    ck.version_path.write_text("five")
    with pytest.raises(CheckpointError, match="does not hold a version") as err:
        ck.restore(catalog)
    assert isinstance(err.value, FairstreamError)

