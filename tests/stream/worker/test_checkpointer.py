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


class _SendsThenSettles(_Settled):
    """A two-phase sink (the statistics exchange's shape): notes the order of its calls."""

    def __init__(self, path, fail=False):
        super().__init__(path)
        self.calls, self.fail = [], fail

    def start_settle(self):
        self.calls.append(("start", self.path.exists()))

    def settle(self):
        self.calls.append(("settle", self.path.exists()))
        if self.fail:
            raise RuntimeError("not acknowledged")


def test_sends_first_settles_before_writing_and_a_failed_settle_writes_nothing(setup):
    settings, catalog = setup
    path = Path(settings.worker.checkpoint_path)
    first = _SendsThenSettles(path)
    ck = Checkpointer(settings, Metrics(), acked=[first, _Settled(path)])
    state = ck.restore(catalog)
    ck.checkpoint(state, lock=threading.Lock())
    assert first.calls == [("start", False), ("settle", False)]
    before = path.read_bytes()
    state.next_version()  # moved on since: a checkpoint that cannot settle must not record it
    failing = Checkpointer(settings, Metrics(), acked=[_SendsThenSettles(path, fail=True)])
    committed = []
    with pytest.raises(RuntimeError, match="not acknowledged"):
        failing.checkpoint(state, lock=threading.Lock(), commit=committed.append)
    assert path.read_bytes() == before and committed == []


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



def test_the_experiment_results_move_with_the_checkpoint(setup):
    """The worker's experiment results are a part of its checkpoint: a worker restored
    from it holds the counts the checkpoint's offsets cover, not a fresh count."""
    from stream.core.join import Pending
    from stream.worker.experiments import ExperimentResultsRoom

    settings, catalog = setup
    settings = settings.replace(experiment={
        "name": "e", "arms": [{"name": "control", "share": 0.5}, {"name": "b", "share": 0.5}]})
    items = catalog.ids[:3]
    closed = [Pending(f"r{i}", f"u{i % 7}", float(i), tuple(items), (1.0, 1.0, 1.0),
                      {"gender": "F"}, [float(i % 3 == 0), 0.0, 0.0],
                      experiment="e", arm="b" if i % 2 else "control") for i in range(40)]
    room = ExperimentResultsRoom(settings, Metrics())
    ck = Checkpointer(settings, Metrics(), parts=[room])
    state = ck.restore(catalog)
    room.observed(closed, catalog)
    written = ck.checkpoint(state, lock=threading.Lock())
    assert written.header["parts"]["experiment"]["experiment"] == "e"
    room.observed(closed[:10], catalog)  # after the checkpoint: not in it

    again = ExperimentResultsRoom(settings, Metrics())
    Checkpointer(settings, Metrics(), parts=[again]).restore(catalog)
    assert {a: (r.reward.n, r.shown) for a, r in again.results.arms.items()} \
        == {"control": (20, 60), "b": (20, 60)}
    mine = {a: r.reward.state()[0] for a, r in again.results.arms.items()}
    # The room before its last ten impressions: the same sums, bit for bit.
    before = ExperimentResultsRoom(settings, Metrics())
    before.observed(closed, catalog)
    assert mine == {a: r.reward.state()[0] for a, r in before.results.arms.items()}
