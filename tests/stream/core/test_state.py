import numpy as np

from stream.core.catalog import Catalog
from stream.core.state import LearningState
from stream.kafka.producers import catalog_items, replay_events
from stream.settings import load_settings


def test_one_batch_learns_what_one_impression_at_a_time_does(movielens, encoder, data_cache):
    """Profiles walk in order and drift detectors see each segment's rewards in order, so
    how a stream is cut into batches changes nothing (in one partition's closing order)."""
    settings = load_settings().replace(data={"cache_dir": data_cache},
                                       events={"attribution_window_s": 2.0})
    catalog = Catalog(encoder.dim)
    catalog.add(catalog_items(movielens), encoder)
    joiner_state = LearningState.fresh(settings, catalog)
    closed = []
    for event in replay_events(movielens, limit=3000):
        closed += joiner_state.observe(event, 0)
    closed += joiner_state.joiner.flush()
    batched, single = (LearningState.fresh(settings, catalog) for _ in range(2))
    batched.learn(closed)
    for pending in closed:
        single.learn([pending])

    np.testing.assert_allclose(batched.policy.A, single.policy.A, rtol=1e-9)
    np.testing.assert_allclose(batched.policy.b, single.policy.b, rtol=1e-9, atol=1e-12)
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
