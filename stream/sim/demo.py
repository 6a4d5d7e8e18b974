"""``fairstream demo``: the whole loop on real parts, on one machine.

Starts the embedded broker, fetches MovieLens-100K if absent, publishes the
catalog, runs a learning worker, and drives it with the closed-loop MovieLens
simulator (the worker's live policy picks every slate). A handful of malformed
messages is published too, so the dead-letter path shows up on /metrics.
Writes ``summary.json`` and ``reward.png`` to the run directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer

from stream import data
from stream.events import Click, Event, EventCodec
from stream.kafka.broker import EmbeddedBroker
from stream.kafka.producers import catalog_items, make_producer, popularity_group, publish_catalog
from stream.kafka.topics import ensure_topics
from stream.privacy import Pseudonymizer
from stream.serve import ServeRuntime
from stream.settings import Settings
from stream.sim.simulator import MovieLensSimulator, SimulationResult, throttle
from stream.worker import Worker, WorkerThread

log = logging.getLogger(__name__)

#: One malformed message per rejection reason (oversize is built from the limit).
MALFORMED = {
    "undecodable": b"\x00\xff not json",
    "unknown_version": b'{"v": 99, "type": "click", "event_id": "x"}',
    "missing_field": b'{"v": 1, "type": "click", "event_id": "bad-1", "ts": 1.0}',
    "invalid_field": b'{"v": 1, "type": "click", "event_id": "bad-2", "request_id": "r", '
                     b'"ts": "yesterday", "user_id": "1", "item_id": "1"}',
    "non_finite": b'{"v": 1, "type": "purchase", "event_id": "bad-3", "request_id": "r", '
                  b'"ts": 1.0, "user_id": "1", "item_id": "1", "value": NaN}',
    "unknown_item": b'{"v": 1, "type": "click", "event_id": "bad-4", "request_id": "r", '
                    b'"ts": 1.0, "user_id": "1", "item_id": "no-such-item"}',
}


def _publish_malformed(settings: Settings, producer: KafkaProducer) -> int:
    bad = dict(MALFORMED, oversize=b" " * (settings.events.max_bytes + 1))
    for reason, value in bad.items():
        producer.send(settings.topics.events, key=f"malformed-{reason}".encode(), value=value)
    return len(bad)


def run_demo(settings: Settings, events: int | None = None, out_dir: str | Path = "runs/latest",
             seed: int = 0, n_candidates: int = 20, progress: bool = True) -> dict[str, Any]:
    """Run the closed loop over ``events`` arrivals (all 100,000 ratings by default)."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data.fetch(settings.data.cache_dir, ("ml100k",))
    ml = data.load_movielens(settings.data.cache_dir)
    n_arrivals = len(ml.ratings) if events is None else min(events, len(ml.ratings))

    with EmbeddedBroker(log_path=out / "broker.log") as broker:
        settings = settings.replace(
            kafka={"bootstrap": broker.bootstrap},
            worker={"checkpoint_path": str(out / "checkpoint.npz")},
            # Publish often: the simulator chooses with the newest policy the server holds.
            policy={"publish_every_s": 1.0, "publish_every_updates": 2_000},
        )
        ensure_topics(settings)
        publish_catalog(settings, catalog_items(ml))
        worker = Worker(settings)
        port = worker.serve_metrics()
        print(f"fairstream: broker {broker.bootstrap}; worker metrics at "
              f"http://{settings.worker.metrics_host}:{port}/metrics", flush=True)
        running = WorkerThread(worker, flush_on_exit=True).start(timeout_s=None)
        # The serving side, in-process: it follows fairstream.policies (verifying every
        # bundle), the catalog and the worker's serving profiles, exactly as
        # `fairstream serve` does.
        server = ServeRuntime(settings, encoder=worker.encoder).start()
        server.recommender.impressions = None  # the simulator publishes the impressions
        server.wait_ready(timeout_s=120)

        codec = EventCodec(settings.events.max_bytes, settings.events.max_slate)
        # The simulator plays the apps: it is an edge, so its users reach the server and
        # Kafka as pseudonyms with their gender code and age bucket only.
        edge = Pseudonymizer.from_settings(settings.privacy)
        producer = make_producer(settings)
        malformed = _publish_malformed(settings, producer)
        published = 0
        versions: list[tuple[int, int]] = []  # (arrival, policy version) at each change

        def publish(event: Event) -> None:
            nonlocal published
            event = edge.event(event)
            producer.send(settings.topics.events, key=event.user_id.encode(),
                          value=codec.encode(event))
            published += 1
            if isinstance(event, Click):  # as a client app's POST /feedback tells the server
                server.recommender.note_click(event.user_id, event.item_id)

        def recommend(user, attrs, cands, k, rng, now):
            rec = server.recommender.recommend(edge.user(user), edge.attrs(attrs), cands, k,
                                               rng=rng, now=now)
            if not versions or versions[-1][1] != int(rec.policy_version):
                versions.append((sim_arrivals(), int(rec.policy_version)))
            return rec.items, np.asarray(rec.propensities), rec.policy_version

        def consumed_impressions() -> int:
            running.check()
            return worker.report.by_type.get("impression", 0)

        sim = MovieLensSimulator(ml, popularity_group(ml), n_candidates=n_candidates,
                                 k=settings.bandit.slate_size, seed=seed)
        arrivals = [0]

        def sim_arrivals() -> int:
            return arrivals[0]

        started = time.monotonic()
        wait = throttle(consumed_impressions, max_lag=500)

        def wait_and_flush(i: int) -> None:
            arrivals[0] = i
            if i % 100 == 0:
                producer.flush()
            wait(i)

        try:
            result = sim.run(recommend, publish, n_arrivals, wait_for_learner=wait_and_flush,
                             progress=progress)
            producer.flush()
            producer.close()
            total = published + malformed
            deadline = time.monotonic() + 120
            while (worker.report.events < total and time.monotonic() < deadline
                   and running.is_alive()):
                time.sleep(0.05)
            elapsed = time.monotonic() - started
        finally:
            server.close()
            running.stop(timeout_s=None)

    summary = _summary(result, worker, published, elapsed)
    summary["policy_versions"] = {"first": versions[0][1], "last": versions[-1][1],
                                  "changes": len(versions) - 1,
                                  "timeline": [{"arrival": a, "version": v} for a, v in versions]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(result, out / "reward.png", settings.bandit.algorithm)
    _print_summary(summary, out)
    return summary


def _summary(result: SimulationResult, worker: Worker, published: int,
             elapsed: float) -> dict[str, Any]:
    report = worker.report
    return {
        "events": published,
        "events_per_s": published / elapsed if elapsed > 0 else 0.0,
        **result.summary(),
        "lift_over_random": result.mean_reward / result.random_mean_reward - 1.0
        if result.random_mean_reward else None,
        "worker": {"events_consumed": report.events, "by_type": report.by_type,
                   "rejected": report.rejected, "duplicates": report.duplicates,
                   "rows_learned": report.rows_learned,
                   "policy": repr(worker.state.policy),
                   "feature_space": worker.state.fmap.feature_space,
                   "checkpoint_version": worker.state.version},
        "finetunes": worker.finetune.summary(),
        "elapsed_s": elapsed,
    }


def _plot(result: SimulationResult, path: Path, algorithm: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = np.array(result.curve)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if len(curve):
        ax.plot(curve[:, 0], curve[:, 1], label=f"fairstream ({algorithm}, live policy)")
        ax.plot(curve[:, 0], curve[:, 2], label="uniform random (same candidates)", ls="--")
    ax.set_xlabel("arrivals (MovieLens-100K, timestamp order)")
    ax.set_ylabel("cumulative mean reward (rating ≥ 4)")
    ax.set_title("Closed-loop simulation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    lines = [
        "",
        "fairstream demo summary",
        f"  events published      {summary['events']:>10,}  ({summary['events_per_s']:,.0f}/s)",
        f"  arrivals              {summary['arrivals']:>10,}",
        f"  mean reward           {summary['mean_reward']:>10.4f}",
        f"  random policy         {summary['random_mean_reward']:>10.4f}",
        f"  lift over random      {100 * (summary['lift_over_random'] or 0):>9.1f}%",
        f"  tail exposure share   {summary['tail_exposure_share']:>10.4f}"
        f"  (tail share of candidates {summary['tail_candidate_share']:.4f})",
        f"  rejected to DLQ       {summary['worker']['rejected']:>10,}",
        f"  policy versions       {summary['policy_versions']['first']} → "
        f"{summary['policy_versions']['last']} ({summary['policy_versions']['changes']} swaps "
        "picked up by the server)",
        "  reward by quarter     " + "  ".join(f"{v:.3f}" for v in summary["reward_by_quarter"])
        + "   (random: " + "  ".join(f"{v:.3f}" for v in summary["random_by_quarter"]) + ")",
        _finetune_line(summary["finetunes"]),
        *(f"    {r['trigger']:<7} {r['rows']:>6,} rows  log-loss {r['loss_before']:.4f} → "
          f"{r['loss_after']:.4f}  {r['outcome']:<8}"
          + (f"  recent MSE {r['mse_current']:.4f} → {r['mse_rebuilt']:.4f}"
             if r["mse_rebuilt"] is not None else "")
          + (f"  reward {r['reward_before']:.3f} → {r['reward_after']:.3f}"
             if r["reward_before"] is not None and r["reward_after"] is not None else "")
          for r in summary["finetunes"]["runs"]),
        "  reward by user group:",
        *(f"    {g:<16} {v:.4f}" for g, v in summary["reward_by_user_group"].items()),
        f"  written: {out / 'summary.json'}, {out / 'reward.png'}",
    ]
    print("\n".join(lines), flush=True)


def _finetune_line(ft: dict[str, Any]) -> str:
    return (f"  fine-tunes            {ft['started']:>10,} started, {ft['completed']} completed, "
            f"{ft['adopted']} adopted, {ft['rejected']} rejected, {ft['timed_out']} timed out, "
            f"{ft['failed']} failed")
