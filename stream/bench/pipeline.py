"""Throughput benchmark (``fairstream bench pipeline``): one worker end to end vs the pipe.

Three rates, measured in one run on one broker and one topic:

* ``raw_consume_events_per_s`` — the ceiling: a bare ``KafkaConsumer`` in a
  process of its own (:mod:`stream.bench.rawconsume`; assigned to every
  partition, no group) iterating all records, decoding nothing. Measured
  before and after the worker; the larger is reported.
* ``learn_events_per_s`` — records/s one :class:`stream.worker.Worker`
  (in its own thread, tuned as ``fairstream worker`` runs it, with its fetch
  process) takes end to end: fetch → decode → validate → dedup → reward join
  → features → bandit update, with publishing and checkpoints at their
  normal cadence.
* ``vw_learn_events_per_s`` — Vowpal Wabbit ``--cb_adf`` learning one joined
  impression per example (the shown item as the single action, cost −reward,
  its logged propensity) on the same 64-d φ the worker learnt from,
  in-process, text examples formatted before timing. Reported as records/s
  covered (an impression and its click are two records), beside
  ``vw_learn_rows_per_s``.

All rates are taken from the moment the first records arrive to the moment
the last one is handled (group join, catalog embedding and model load are
excluded). The default backlog is 98,000 ratings (about 152,000 records,
several seconds of learning): the worker learns nothing until its fetch
process has parsed a first poll, and over 20,000 ratings (four polls) that
fill alone was about a fifth of the timed span. The events are a MovieLens
replay (:func:`stream.kafka.producers.replay_events`) published before timing starts; the
attribution window is short (``events.attribution_window_s`` = 2 s of event
time) so an impression closes as soon as a later event of its partition
arrives.

Latency (``latency_p50_s`` / ``latency_p99_s``) is measured in a second,
live phase, after the backlog is drained: further replay events are produced
at a steady rate (half the measured learn rate by default) while the worker
runs. An event's produce time is the wall clock at ``send`` (what Kafka
stamps as the record's CreateTime); it is included in the policy when the
``Worker.learn`` call that learns its impression returns (instrumented in a
subclass, :class:`TimedWorker`). Both impressions and clicks count; the
last impression of each partition stays open (nothing later closes its
window) and is left out. With a backlog the same number would only measure
queueing, so the backlog phase reports no latency.
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from stream.bench.hoststats import CpuWindow, cpu_times
from stream.worker import Worker, WorkerThread

__all__ = ["TimedWorker", "run_pipeline_bench"]

ATTRIBUTION_WINDOW_S = 2.0


class TimedWorker(Worker):
    """A Worker that records when each batch of impressions enters its policy.

    ``learned_at`` holds ``(wall time when learn returned, request_ids)``;
    ``first_records_at`` / ``target_reached_at`` (perf_counter) bracket the
    handling of the first ``target`` records, and ``host`` the machine's CPU
    times over the same span.
    """

    def __init__(self, *args: Any, target: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target = target
        self.learned_at: list[tuple[float, list[str]]] = []
        self.first_records_at: float | None = None
        self.target_reached_at: float | None = None
        self.rows_at_target = 0
        self.host = CpuWindow()

    def step(self) -> int:
        t0 = time.perf_counter()
        before = cpu_times() if self.first_records_at is None else None
        n = super().step()
        if n and self.first_records_at is None:
            self.first_records_at = t0
            self.host.start = before
        if self.target_reached_at is None and self.report.events >= self.target > 0:
            now = time.perf_counter()
            self.host.finish()
            self.rows_at_target = self.report.rows_learned
            self.target_reached_at = now  # last: the bench thread waits on this one
        return n

    def learn(self, closed):
        learned = super().learn(closed)
        self.learned_at.append((time.time(), [p.request_id for p in closed]))
        return learned


def _raw_consume(settings, expected: int, timeout_s: float = 120.0) -> dict[str, float]:
    """Records/s of a bare consumer process reading the events topic from the beginning
    (:mod:`stream.bench.rawconsume`)."""
    w = settings.worker
    cmd = [sys.executable, "-m", "stream.bench.rawconsume", settings.kafka.bootstrap,
           settings.topics.events, str(settings.kafka.events_partitions), str(expected),
           "--max-records", str(w.poll_max_records),
           "--poll-timeout-ms", str(w.poll_timeout_ms),
           "--fetch-max-wait-ms", str(w.fetch_max_wait_ms), "--timeout-s", str(timeout_s)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"raw consumer failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _joined_impressions(events: list) -> list[tuple[Any, float]]:
    """(impression, reward) per replayed impression: 1 when a click for it follows."""
    from stream.events import Click, Impression

    clicked = {e.request_id for e in events if isinstance(e, Click)}
    return [(e, 1.0 if e.request_id in clicked else 0.0) for e in events
            if isinstance(e, Impression)]


def _vw_rate(worker: Worker, events: list) -> dict[str, float]:
    """VW --cb_adf learning one joined impression per example on the worker's φ."""
    import vowpalwabbit

    joined = _joined_impressions(events)
    state = worker.state
    examples = []
    for imp, reward in joined:
        x = state.features(imp.user_id, dict(imp.user), imp.items, imp.ts)[0]
        feats = " ".join(f"f{j}:{v:.6g}" for j, v in enumerate(x) if v != 0.0)
        examples.append(["shared |u c",
                         f"0:{-reward:g}:{imp.propensities[0]:g} |a {feats}"])
    vw = vowpalwabbit.Workspace("--cb_adf --quiet")
    t0 = time.perf_counter()
    for ex in examples:
        vw.learn(ex)
    elapsed = time.perf_counter() - t0
    vw.finish()
    rows = len(examples)
    return {"rows": rows, "records": len(events), "elapsed_s": elapsed,
            "rows_per_s": rows / elapsed if elapsed > 0 else 0.0,
            "rate": len(events) / elapsed if elapsed > 0 else 0.0}


def _live_phase(settings, worker: TimedWorker, events: list, rate: float,
                timeout_s: float) -> dict[str, Any]:
    """Produce ``events`` at ``rate``/s while the worker runs; event→policy latencies."""
    from stream.events import EventCodec, Impression
    from stream.kafka.producers import make_producer

    codec = EventCodec(settings.events.max_bytes, settings.events.max_slate)
    producer = make_producer(settings)
    sent: dict[tuple[str, str], float] = {}
    before = worker.report.events
    start = time.monotonic()
    try:
        for i, event in enumerate(events):
            ahead = i / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
            kind = "imp" if isinstance(event, Impression) else "click"
            sent[(event.request_id, kind)] = time.time()
            producer.send(settings.topics.events, key=event.user_id.encode(),
                          value=codec.encode(event))
        producer.flush()
    finally:
        producer.close()
    n_imp = sum(1 for e in events if isinstance(e, Impression))
    deadline = time.monotonic() + timeout_s
    live_ids = {rid for rid, kind in sent if kind == "imp"}
    learned: dict[str, float] = {}
    seen_batches, quiet_since = 0, time.monotonic()
    # Done when every record is handled and nothing more closes for a second: the
    # impressions still open then wait for later event time that never comes.
    while time.monotonic() < deadline and len(learned) < n_imp:
        batches = worker.learned_at[seen_batches:]
        seen_batches += len(batches)
        for t, ids in batches:
            for rid in ids:
                if rid in live_ids:
                    learned.setdefault(rid, t)
        now = time.monotonic()
        if batches:
            quiet_since = now
        if worker.report.events - before >= len(events) and now - quiet_since > 1.0:
            break
        time.sleep(0.05)
    lat = [t - sent[(rid, kind)] for rid, t in learned.items()
           for kind in ("imp", "click") if (rid, kind) in sent]
    lat_a = np.array(lat) if lat else np.array([np.nan])
    return {"events": len(events), "rate": rate, "impressions": n_imp,
            "impressions_learned": len(learned), "samples": len(lat),
            "p50_s": float(np.percentile(lat_a, 50)), "p99_s": float(np.percentile(lat_a, 99)),
            "max_s": float(np.max(lat_a))}


#: Ratings the backlog replays by default: MovieLens-100K less the live phase's 2,000.
DEFAULT_EVENTS = 98_000


def run_pipeline_bench(settings=None, events: int = DEFAULT_EVENTS,
                       out_dir: str | os.PathLike[str] = "runs/bench-pipeline",
                       json_path: str | os.PathLike[str] | None = None, progress: bool = True,
                       *, bootstrap: str | None = None, encoder=None,
                       live_events: int | None = None, live_rate: float | None = None,
                       profile: bool = False) -> dict[str, Any]:
    """Benchmark one worker against the raw consume rate and VW (see module docstring).

    ``events`` MovieLens ratings are replayed (an impression each, plus a click
    for ratings ≥ 4). Starts its own :class:`~stream.kafka.broker.EmbeddedBroker`
    unless ``bootstrap`` names a running broker. ``live_events`` ratings
    (default ``min(events // 4, 2000)``) feed the latency phase at
    ``live_rate`` events/s (default half the measured learn rate). With
    ``profile`` the worker thread runs under cProfile (its rate then includes
    the profiler's overhead) and ``profile.txt`` is written. Writes
    ``results.json`` to ``out_dir`` (and to ``json_path`` when given).
    """
    from stream import data
    from stream.kafka.broker import EmbeddedBroker
    from stream.kafka.producers import catalog_items, publish_catalog, publish_events, replay_events
    from stream.kafka.topics import ensure_topics
    from stream.settings import load_settings

    started = time.perf_counter()

    def say(msg: str) -> None:
        if progress:
            print(f"[bench {time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    settings = settings or load_settings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data.fetch(settings.data.cache_dir, ("ml100k",))
    ml = data.load_movielens(settings.data.cache_dir)
    n_live = min(events // 4, 2000) if live_events is None else live_events
    all_events = list(replay_events(ml, limit=events + n_live))
    n_backlog_events = sum(1 for e in replay_events(ml, limit=events))
    backlog, live = all_events[:n_backlog_events], all_events[n_backlog_events:]

    gc_state = gc.get_threshold()
    with contextlib.ExitStack() as stack:
        # The worker tunes the collector and BLAS of the process it runs in; give them
        # back after (leaving this context restores the BLAS thread counts it found).
        stack.callback(gc.set_threshold, *gc_state)
        stack.callback(gc.unfreeze)
        stack.enter_context(threadpool_limits(limits=None, user_api="blas"))
        if bootstrap is None:
            broker = stack.enter_context(EmbeddedBroker(log_path=out / "broker.log"))
            bootstrap = broker.bootstrap
        tag = f"bench{os.getpid()}x{int(time.time() * 1000) % 10**8}"
        ck_dir = out / "checkpoint"
        shutil.rmtree(ck_dir, ignore_errors=True)
        settings = settings.replace(
            kafka={"bootstrap": bootstrap, "group_id": f"{tag}-workers"},
            topics={"prefix": tag},
            events={"attribution_window_s": ATTRIBUTION_WINDOW_S},
            worker={"checkpoint_path": str(ck_dir / "checkpoint.npz"), "metrics_port": 0},
        )
        ensure_topics(settings)
        publish_catalog(settings, catalog_items(ml))
        say(f"broker {bootstrap}; topics {tag}.*; publishing {len(backlog)} events "
            f"({events} ratings) before timing")
        publish_events(settings, iter(backlog), total=len(backlog), progress=progress)

        raw_before = _raw_consume(settings, len(backlog))
        say(f"raw consume: {raw_before['records']} records, {raw_before['rate']:,.0f}/s")

        # As `fairstream worker` runs it: the worker owns the process (its GC tuning).
        worker = TimedWorker(settings, encoder=encoder, target=len(backlog), own_process=True)
        profiler = cProfile.Profile() if profile else None
        running = WorkerThread(worker, wrap=profiler.runcall if profiler else None).start()
        say("worker started (model load, catalog, group join are not timed)")
        deadline = time.monotonic() + 600
        while worker.target_reached_at is None and running.is_alive():
            if time.monotonic() > deadline:
                running.stop_event.set()
                raise TimeoutError(f"worker handled {worker.report.events}/{len(backlog)} "
                                   "records in 600 s")
            time.sleep(0.05)
        running.check()
        learn_s = worker.target_reached_at - worker.first_records_at
        learn_rate = len(backlog) / learn_s if learn_s > 0 else 0.0
        say(f"worker: {len(backlog)} records, {worker.rows_at_target} rows learned in "
            f"{learn_s:.2f}s → {learn_rate:,.0f} records/s")

        rate = live_rate or float(np.clip(0.5 * learn_rate, 50.0, 5000.0))
        live_res = _live_phase(settings, worker, live, rate, timeout_s=60.0) if live else None
        if live_res:
            say(f"live phase: {live_res['events']} events at {rate:,.0f}/s; latency p50 "
                f"{live_res['p50_s'] * 1e3:.1f} ms, p99 {live_res['p99_s'] * 1e3:.1f} ms")
        running.stop(timeout_s=120)
        raw_after = _raw_consume(settings, len(backlog))
        say(f"raw consume again: {raw_after['rate']:,.0f}/s")
        vw = _vw_rate(worker, backlog)
        say(f"VW --cb_adf: {vw['rows']} impressions in {vw['elapsed_s']:.2f}s → "
            f"{vw['rows_per_s']:,.0f} rows/s ({vw['rate']:,.0f} records/s covered)")

    raw_rate = max(raw_before["rate"], raw_after["rate"])
    result: dict[str, Any] = {
        "learn_events_per_s": learn_rate,
        "raw_consume_events_per_s": raw_rate,
        "vw_learn_events_per_s": vw["rate"],
        "latency_p50_s": live_res["p50_s"] if live_res else None,
        "latency_p99_s": live_res["p99_s"] if live_res else None,
        "learn_fraction_of_raw": learn_rate / raw_rate if raw_rate else None,
        "learn_rows_per_s": worker.rows_at_target / learn_s if learn_s > 0 else 0.0,
        "vw_learn_rows_per_s": vw["rows_per_s"],
        "host_cpu_while_learning": worker.host.shares(),
        "details": {
            "ratings": events, "records": len(backlog), "learn_elapsed_s": learn_s,
            "rows_learned": worker.rows_at_target,
            "raw_consume": {"before": raw_before, "after": raw_after},
            "vw": {**vw, "command": "--cb_adf", "features": "worker φ (64-d), one action"},
            "live": live_res,
            "worker_report": {"events": worker.report.events,
                              "rows_learned": worker.report.rows_learned,
                              "rejected": worker.report.rejected,
                              "by_type": worker.report.by_type},
            "settings": {"partitions": settings.kafka.events_partitions,
                         "poll_max_records": settings.worker.poll_max_records,
                         "checkpoint_every_events": settings.worker.checkpoint_every_events,
                         "checkpoint_every_s": settings.worker.checkpoint_every_s,
                         "attribution_window_s": settings.events.attribution_window_s,
                         "algorithm": settings.bandit.algorithm,
                         "feature_dim": settings.features.dim},
            "profiled": profile,
        },
    }
    if profiler is not None:
        result["details"]["profile_top"] = _write_profile(profiler, out / "profile.txt")
    text = json.dumps(result, indent=2) + "\n"
    (out / "results.json").write_text(text)
    if json_path is not None:
        Path(json_path).write_text(text)
    steal = result["host_cpu_while_learning"]["steal"]
    say(f"learn/raw = {result['learn_fraction_of_raw']:.2f}"
        + (f" (host CPU stolen while learning: {100 * steal:.1f} %)" if steal is not None else "")
        + f"; wrote {out / 'results.json'}")
    return result


def _write_profile(profiler: cProfile.Profile, path: Path, top: int = 40) -> list[str]:
    """Write the worker thread's profile (by cumulative and own time); return the top lines."""
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    path.write_text(buf.getvalue())
    tt = io.StringIO()
    pstats.Stats(profiler, stream=tt).strip_dirs().sort_stats("tottime").print_stats(15)
    return [line for line in tt.getvalue().splitlines() if line.strip()][-16:]

