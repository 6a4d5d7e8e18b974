"""Metrics that tell how well the worker learns: reward and CTR by traffic source and policy
version, unjoined feedback by reason, "no data yet" as an absent series, the progress line."""

from __future__ import annotations

import logging
import time

import pytest
from prometheus_client import generate_latest

from stream.core.join import UNJOINED, Pending, RewardJoiner
from stream.events import Click, EventCodec, Impression, compact
from stream.kafka.producers import (
    catalog_items,
    publish_catalog,
    publish_events,
    replay_events,
)
from stream.kafka.topics import ensure_topics
from stream.metrics import Metrics
from stream.privacy import Pseudonymizer
from stream.worker import Worker, WorkerThread
from stream.worker.outcomes import MAX_VERSIONS, REPLAY_VERSION, Outcomes, source_of


def test_the_join_counts_what_joins_nothing_by_reason():
    j = RewardJoiner(window_s=10, weights={"click": 1.0, "purchase": 2.0})
    j.add_impression(0, Pending("r1", "alice", 100.0, ("a", "b"), (1.0, 1.0), {}))
    j.add_impression(0, Pending("r1", "alice", 100.0, ("c",), (1.0,), {}))  # repeated request
    j.add_feedback(0, "r1", "a", "click", 101.0, "alice")     # joins
    j.add_feedback(0, "nope", "a", "click", 101.0, "alice")   # unknown_request
    j.add_feedback(0, "r1", "a", "click", 99.0, "alice")      # outside_window (before)
    j.add_feedback(0, "r1", "b", "click", 102.0, "mallory")   # wrong_user
    j.add_feedback(0, "r1", "z", "click", 102.0, "alice")     # item_not_shown
    j.add_feedback(0, "r1", "b", "purchase", 102.0)           # no user given: joins
    (closed,) = j.advance(0, 200.0)
    assert closed.rewards == [1.0, 2.0]
    j.add_feedback(0, "r1", "a", "click", 201.0, "alice")     # its window closed: unknown
    assert j.unjoined == {"unknown_request": 2, "outside_window": 1, "wrong_user": 1,
                          "item_not_shown": 1, "repeated_request": 1}
    assert j.orphans == 6 and set(j.unjoined) == set(UNJOINED)


def test_reward_and_ctr_are_split_by_source_and_version_and_versions_stay_bounded():
    m = Metrics()
    o = Outcomes(m)
    served = [Pending(f"s{i}", "u", 0.0, ("a", "b"), (1.0, 1.0), {}, [1.0, 0.0], "3")
              for i in range(4)]
    bought = Pending("s9", "u", 0.0, ("a",), (1.0,), {}, [2.0], "3")
    replay = [Pending(f"l{i}", "u", 0.0, ("a",), (0.2,), {}, [0.0], REPLAY_VERSION)
              for i in range(5)]
    o.count([*served, bought, *replay])
    o.sync_unjoined({"wrong_user": 2})
    o.sync_unjoined({"wrong_user": 3, "item_not_shown": 1})

    def value(name, **labels):
        return m.registry.get_sample_value(name, labels)

    assert value("fairstream_policy_shown_total", source="served", policy_version="3") == 9
    assert value("fairstream_policy_reward_sum_total", source="served",
                 policy_version="3") == 6.0
    assert value("fairstream_policy_clicked_total", source="served", policy_version="3") == 5
    assert value("fairstream_policy_shown_total", source="replay",
                 policy_version=REPLAY_VERSION) == 5
    assert value("fairstream_policy_clicked_total", source="replay",
                 policy_version=REPLAY_VERSION) == 0
    assert value("fairstream_feedback_unjoined_total", reason="wrong_user") == 3
    assert value("fairstream_feedback_unjoined_total", reason="item_not_shown") == 1
    assert o.take_window() == {"served": (9, 6.0, 5), "replay": (5, 0.0, 0)}
    assert o.take_window() == {}
    # One version more than kept: the one seen longest ago loses its series.
    for v in range(4, 4 + MAX_VERSIONS):
        o.count([Pending("x", "u", 0.0, ("a",), (1.0,), {}, [1.0], str(v))])
    assert value("fairstream_policy_shown_total", source="served", policy_version="3") is None
    assert value("fairstream_policy_shown_total", source="served", policy_version="4") == 1
    assert value("fairstream_policy_shown_total", source="replay",
                 policy_version=REPLAY_VERSION) == 5  # replay is not a served version
    assert [source_of(v) for v in ("12", REPLAY_VERSION, "")] == ["served", "replay",
                                                                   "unknown"]


def test_no_data_yet_is_an_absent_series_not_a_zero():
    m = Metrics()
    text = generate_latest(m.registry).decode()
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
               if line and not line.startswith("#")}
    for name in ("fairstream_fairness_exposure_disparity", "fairstream_finetune_loss",
                 "fairstream_finetune_loss_before"):
        assert name not in samples
        assert f"# TYPE {name} gauge" in text  # the family is declared, with no sample
    m.finetune_loss.set(0.0)  # a real 0 is a value once there is one
    assert m.registry.get_sample_value("fairstream_finetune_loss") == 0.0


def test_impressions_carry_their_policy_version_to_the_worker(movielens):
    (replayed, *_) = [e for e in replay_events(movielens, limit=20) if type(e) is Impression]
    assert replayed.policy_version == REPLAY_VERSION
    codec = EventCodec()
    served = Impression(event_id="e", request_id="r", ts=1.0, user_id="u", items=["1"],
                        propensities=[1.0], policy_version="17")
    assert compact(codec.decode(codec.encode(served))).policy_version == "17"


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in list(caplog.records)
            if r.getMessage().startswith("progress:")]


@pytest.mark.broker
@pytest.mark.model
def test_a_worker_on_the_broker_reports_outcomes_by_source_and_logs_progress(
        make_settings, movielens, encoder, caplog):
    # One events partition: a click by another user than the impression's reaches the
    # impression's join only when both users' pseudonyms share a partition.
    settings = make_settings(worker={"log_every_s": 0.5}, events={"attribution_window_s": 5.0},
                             kafka={"events_partitions": 1})
    ensure_topics(settings)
    publish_catalog(settings, catalog_items(movielens)[:300])
    now = time.time() - 60
    stray = [Click(event_id="w", request_id="q0", ts=now + 2, user_id="u9", item_id="2"),
             Click(event_id="n", request_id="nope", ts=now + 2, user_id="u0", item_id="2"),
             Click(event_id="s", request_id="q1", ts=now + 2, user_id="u1", item_id="9")]
    events = []
    for i in range(6):  # served by policy 3: every first item clicked
        events.append(Impression(event_id=f"i{i}", request_id=f"q{i}", ts=now + i,
                                 user_id=f"u{i}", items=["1", "2"], propensities=[0.9, 0.8],
                                 policy_version="3", user={"gender": "F", "age": 30}))
        events.append(Click(event_id=f"c{i}", request_id=f"q{i}", ts=now + i + 1,
                            user_id=f"u{i}", item_id="1"))
    for i in range(4):  # logged traffic, no feedback
        events.append(Impression(event_id=f"l{i}", request_id=f"l{i}", ts=now + i,
                                 user_id=f"u{i}", items=["3"], propensities=[1.0],
                                 policy_version=REPLAY_VERSION))
    # The stray clicks come while q0 and q1 are still open (event time now + 3, their
    # windows end at now + 5 and now + 6): after i = 2's impression and click.
    events[6:6] = stray
    caplog.set_level(logging.INFO, logger="stream.worker.loop")
    worker = Worker(settings, encoder=encoder)
    with WorkerThread(worker, flush_on_exit=True) as running:
        edge = Pseudonymizer.from_settings(settings.privacy)  # as every producer does
        publish_events(settings, (edge.event(e) for e in events), progress=False)
        deadline = time.monotonic() + 60
        while worker.report.events < len(events):
            assert time.monotonic() < deadline, worker.report
            time.sleep(0.1)
        # Two more progress lines: the second covers an interval that began after the last
        # event, in which nothing can close (a count of lines, not a sleep, decides it).
        seen = len(progress_lines(caplog))
        while len(progress_lines(caplog)) < seen + 2:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.1)
    assert running.report.rows_learned == 6 * 2 + 4

    def value(name, **labels):
        return worker.metrics.registry.get_sample_value(name, labels)

    assert value("fairstream_policy_shown_total", source="served", policy_version="3") == 12
    assert value("fairstream_policy_clicked_total", source="served", policy_version="3") == 6
    assert value("fairstream_policy_reward_sum_total", source="served",
                 policy_version="3") == 6.0
    assert value("fairstream_policy_shown_total", source="replay",
                 policy_version=REPLAY_VERSION) == 4
    assert value("fairstream_policy_reward_sum_total", source="replay",
                 policy_version=REPLAY_VERSION) == 0.0
    # Per user group too, served apart from replayed: the served users are F, aged 30.
    assert value("fairstream_rewards_sum_total", user_group="gender=F", source="served") == 6
    assert value("fairstream_rewards_joined_total", user_group="age=25-34",
                 source="served") == 12
    assert value("fairstream_rewards_joined_total", user_group="gender=unknown",
                 source="replay") == 4
    assert value("fairstream_rewards_joined_total", user_group="gender=F", source="replay") == 0
    for reason in ("wrong_user", "unknown_request", "item_not_shown"):
        assert value("fairstream_feedback_unjoined_total", reason=reason) == 1, reason
    lines = progress_lines(caplog)
    assert all("events/s" in line and "lag" in line and "policy v" in line for line in lines)
    assert "reward n/a" in lines[seen + 1]  # an interval in which nothing closed
