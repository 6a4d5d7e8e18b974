import numpy as np
import pytest

from stream.core.catalog import Catalog
from stream.core.state import LearningState
from stream.kafka.producers import catalog_items, replay_events
from stream.settings import load_settings


def test_one_batch_learns_what_one_impression_at_a_time_does(movielens, encoder, data_cache,
                                                             same_policy):
    """Profiles walk in order and drift detectors see each segment's rewards in order, so
    how a stream is cut into batches changes nothing (in one partition's closing order)."""
    settings = load_settings().replace(data={"cache_dir": data_cache},
                                       events={"attribution_window_s": 2.0})
    catalog, closed = _closed_impressions(settings, movielens, encoder)
    batched, single = (LearningState.fresh(settings, catalog) for _ in range(2))
    batched.learn(closed)
    for pending in closed:
        single.learn([pending])

    same_policy(batched.policy, single.policy)
    a, b = batched.profiles.state(), single.profiles.state()
    assert a["user_ids"] == b["user_ids"]
    np.testing.assert_array_equal(a["means"], b["means"])
    drift, ref = batched.drift, single.drift
    assert drift.updates == ref.updates == sum(len(p.rewards) for p in closed)
    assert len(drift.detections) > 1  # segments of both genders
    assert drift.detections == ref.detections
    assert ({s: drift.width(s) for s in drift.detections}
            == {s: ref.width(s) for s in ref.detections})
    assert batched.buffer.seen == single.buffer.seen == len(closed)


def _compact_replay(movielens, limit):
    from stream.events import compact

    return [compact(e) for e in replay_events(movielens, limit=limit)]


def test_observe_records_checks_the_catalog_dedups_and_moves_the_offset(movielens, encoder,
                                                                        data_cache):
    from stream.events import Feedback, Shown

    settings = load_settings().replace(data={"cache_dir": data_cache})
    catalog = Catalog(encoder.dim)
    catalog.add(catalog_items(movielens), encoder)
    state = LearningState.fresh(settings, catalog)
    events = _compact_replay(movielens, 40)
    unknown = Shown("u-1", "r-u", "1", 0.0, ["1", "no-such-item"], [0.5, 0.5], {})
    stray = Feedback("u-2", "r-u", "1", 0.0, "no-such-item", "click")
    batch = [*events[:5], unknown, events[2], stray, *events[5:]]
    out = state.observe_records(3, batch, next_offset=117)
    assert out.unknown == [5, 7]
    assert out.duplicates == 1
    assert sum(out.kinds.values()) == len(events)
    assert state.offsets == {3: 117}
    # An event left out for its item is not marked seen (seen again, it is unknown again,
    # not a duplicate); the valid ones are.
    again = state.observe_records(3, [stray], next_offset=118)
    assert (again.unknown, again.duplicates) == ([0], 0)
    assert state.observe_records(3, events[:3], next_offset=121).duplicates == 3
    with pytest.raises(TypeError):
        state.offsets[3] = 0  # read-only from outside
    assert state.offsets[3] == 121


def test_versions_only_go_up_and_survive_a_checkpoint(movielens, encoder, data_cache):
    settings = load_settings().replace(data={"cache_dir": data_cache})
    catalog = Catalog(encoder.dim)
    catalog.add(catalog_items(movielens), encoder)
    state = LearningState.fresh(settings, catalog)
    assert (state.version, state.next_version(), state.next_version()) == (0, 1, 2)
    state.skip_versions_to(1)
    assert state.version == 2
    state.skip_versions_to(7)
    assert state.next_version() == 8
    state.observe_records(0, _compact_replay(movielens, 10), next_offset=10)
    back = LearningState.from_checkpoint(settings, catalog, state.to_checkpoint())
    assert (back.version, dict(back.offsets)) == (8, {0: 10})


def _closed_impressions(settings, movielens, encoder, limit=3000):
    """The MovieLens catalog, and the first ``limit`` ratings' impressions as one partition
    closes them (every window closed at the end)."""
    catalog = Catalog(encoder.dim)
    catalog.add(catalog_items(movielens), encoder)
    joiner = LearningState.fresh(settings, catalog)
    closed = []
    for event in replay_events(movielens, limit=limit):
        closed += joiner.observe(event, 0)
    return catalog, closed + joiner.joiner.flush()


def _learnt_state(movielens, encoder, data_cache, capacity):
    settings = load_settings().replace(
        data={"cache_dir": data_cache}, events={"attribution_window_s": 2.0},
        finetune={"enabled": True, "buffer_capacity": capacity, "validation_rows": 400})
    catalog, closed = _closed_impressions(settings, movielens, encoder)
    state = LearningState.fresh(settings, catalog)
    for lo in range(0, len(closed), 50):
        state.learn(closed[lo:lo + 50])
    return state


def _same_space_result(state):
    """A finished fine-tune that kept the adapter as it was, over the whole buffer."""
    from learners import Adapter, FeatureMap, refit_statistics
    from learners.finetune import FineTuneResult

    rows = state.buffer.snapshot()
    fmap = FeatureMap(Adapter.from_bytes(state.fmap.adapter.to_bytes()), dim=state.fmap.dim)
    X, r = refit_statistics(rows, fmap)
    return FineTuneResult(
        fmap=fmap, previous_feature_space=state.fmap.feature_space, loss_before=0.6,
        loss_after=0.5, steps=1, samples=1, train_seconds=0.0, samples_per_s=0.0,
        steps_per_s=0.0, rows=len(rows), snapshot_seen=state.buffer.seen, device="cpu",
        trigger="test", cancelled=False, X=X, r=r, item_rows=rows.item_rows, seq=rows.seq)


def test_a_rebuild_from_a_buffer_holding_everything_is_adopted_and_exact(
        movielens, encoder, data_cache, same_policy):
    state = _learnt_state(movielens, encoder, data_cache, capacity=50_000)
    before = state.policy
    assert state.swap(_same_space_result(state))
    check = state.last_swap_check
    # the same rows in the same batches: the same predictions, up to rounding
    assert check["rows"] == 400
    assert check["mse_rebuilt"] == pytest.approx(check["mse_current"], rel=1e-9)
    same_policy(state.policy, before, rtol=1e-7)  # every row, once, in the same space


def test_a_rebuild_that_forgets_is_rejected_on_the_held_out_recent_rows(
        movielens, encoder, data_cache):
    """A 200-row buffer is a small sample of 15,000 rows: the hybrid rebuilt from it has
    lost most items' own evidence, and predicts the recent rows worse than the current
    bandit did before learning them."""
    state = _learnt_state(movielens, encoder, data_cache, capacity=200)
    before = state.policy
    assert not state.swap(_same_space_result(state))
    check = state.last_swap_check
    assert check["mse_rebuilt"] > check["mse_current"]
    assert state.policy is before
