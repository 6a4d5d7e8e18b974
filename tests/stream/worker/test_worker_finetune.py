"""The worker's NeuralLinear loop on the real broker, model and MovieLens events."""

from __future__ import annotations

import time

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from bandits import policy_from_config
from learners import refit_statistics
from stream.core.bundle import load_bundle
from stream.kafka.producers import catalog_items, publish_catalog, publish_events, replay_events
from stream.kafka.topics import ensure_topics
from stream.worker import Worker, WorkerThread

pytestmark = [pytest.mark.broker, pytest.mark.model]


def latest_bundle(settings):
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(settings.topics.policies, 0)])
    consumer.seek_to_beginning()
    last, deadline = None, time.monotonic() + 10
    while time.monotonic() < deadline:
        batch = consumer.poll(300)
        if not batch and last is not None:
            break
        for records in batch.values():
            last = records[-1].value
    consumer.close()
    return load_bundle(last, key=settings.policy.signing_key.encode(), dim=settings.features.dim)


@pytest.mark.parametrize("algorithm", ["linucb", "hybrid_linucb"])
def test_fine_tune_swaps_feature_space_and_rebuilds_the_bandit_from_the_buffer(
        make_settings, movielens, encoder, algorithm):
    settings = make_settings(
        bandit={"algorithm": algorithm},
        finetune={"enabled": True, "every_updates": 1500, "min_rows": 500, "steps": 80,
                  "validation_rows": 300,
                  "duty_cycle": 1.0},
        events={"attribution_window_s": 60.0},
        policy={"publish_every_s": 3600.0, "publish_every_updates": 10**9},
    )
    ensure_topics(settings)
    publish_catalog(settings, catalog_items(movielens))
    events = list(replay_events(movielens, limit=2500))
    publish_events(settings, iter(events), progress=False)

    worker = Worker(settings, encoder=encoder)
    running = WorkerThread(worker).start(timeout_s=60)
    initial_space = worker.state.fmap.feature_space  # the PCA projection's
    finetunes = worker.metrics.finetunes
    deadline = time.monotonic() + 150
    while (finetunes.labels(outcome="swapped")._value.get()
           + finetunes.labels(outcome="rejected")._value.get()) < 1:
        assert time.monotonic() < deadline and running.is_alive()
        time.sleep(0.2)
    # Let the worker go idle, so nothing is learned after the swap we inspect.
    while worker.report.events < len(events):
        time.sleep(0.1)
    running.stop(timeout_s=60)

    assert finetunes.labels(outcome="swapped")._value.get() == 1
    state = worker.state
    assert state.policy.feature_space == state.fmap.feature_space != initial_space
    # NeuralLinear: the bandit is exactly a fresh one fed the whole buffer in the new space.
    X, r = refit_statistics(state.buffer, state.fmap)
    lam = settings.bandit.lam
    if algorithm == "linucb":
        np.testing.assert_allclose(state.policy.A, lam * np.eye(X.shape[1]) + X.T @ X,
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(state.policy.b, X.T @ r, rtol=1e-9, atol=1e-9)
    else:  # per-item terms too, from the buffer's item rows
        rows = state.buffer.snapshot().item_rows
        assert (rows >= 0).all()
        ids = [state.catalog.ids[i] for i in rows]
        fresh = policy_from_config(algorithm, dim=X.shape[1], feature_space="x",
                                   **state.policy.hyper_parameters())
        fresh.update(X, r, item_ids=ids)
        np.testing.assert_allclose(state.policy.beta, fresh.beta, rtol=1e-7, atol=1e-9)
        for item in sorted(set(ids))[:20]:
            np.testing.assert_allclose(state.policy.theta(item), fresh.theta(item),
                                       rtol=1e-7, atol=1e-9)
        summary = worker.finetune.summary()
        assert summary["started"] >= summary["adopted"] == 1
        run = summary["runs"][0]
        assert run["outcome"] == "swapped" and run["loss_after"] < run["loss_before"]
    assert worker.metrics.registry.get_sample_value("fairstream_finetune_loss") > 0
    # The swap was published: the latest bundle scores in the new feature space.
    bundle = latest_bundle(settings)
    assert bundle.feature_space == state.fmap.feature_space
    assert bundle.policy.n_updates == state.policy.n_updates
