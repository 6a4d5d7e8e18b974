"""``fairstream bench scale``: what several workers with the statistics exchange cost and
give (docs/scaling.md).

Four measurements, in one run, on one broker:

* **events/s learned by 1, 2 and 4 worker processes** over one MovieLens backlog on
  ``kafka.events_partitions`` (4) partitions, the exchange on: from the first record
  handled to the last (summed over the workers' ``/metrics``), with each process's CPU
  seconds in that window (learner, its fetch process) and the broker's;
* **statistics-exchange overhead**: one worker with the exchange off against one with
  it on, same run, each over a backlog (``overhead_ratings``, all of MovieLens 100k by
  default) produced before the worker starts, so the window is learning alone; as
  events/s and as the learner's CPU per 1,000 events, in ``overhead_repeats`` pairs
  (alternating which goes first), reported per pair and as the median;
* **checkpoint seconds by user count**: a worker checkpoint of a state holding 10,000,
  100,000 and 1,000,000 users' profiles (synthetic, 384 float32 each), with the exchange
  (profiles left to their changelog: ``checkpoint_s_by_users``) and without (every
  profile: ``full_checkpoint_s_by_users``), beside the cost of the delta that carries
  one fixed change (1,000 users touched);
* **restore rate**: profiles per second a newly assigned partition restores from
  ``fairstream.profiles`` (100,000 users on one partition), and, for comparison, from
  deltas and from a checkpoint file.

Honest limits: this machine's cores are few and shared, so absolute scaling is capped
by CPU (the CPU figures show where it went). The checkpoint and restore figures here
put the profiles in memory; what the worker's disk store (the default with the
exchange) costs beside memory is ``fairstream bench profiles`` (stream/bench/profiles.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from stream.bench.procstats import child_pids, proc_sample
from stream.core.keys import run_key
from stream.settings import settings_env

DEFAULT_RATINGS = 20_000
DEFAULT_USERS = (10_000, 100_000, 1_000_000)
_HANDLED = ("fairstream_events_consumed_total{", "fairstream_events_rejected_total{",
            "fairstream_events_duplicate_total ")


def run_scale_bench(settings=None, ratings: int = DEFAULT_RATINGS,
                    users: tuple[int, ...] = DEFAULT_USERS, workers: tuple[int, ...] = (1, 2, 4),
                    out_dir: str | os.PathLike[str] = "runs/bench-scale",
                    json_path: str | os.PathLike[str] | None = None,
                    progress: bool = True, bootstrap: str | None = None,
                    restore_users: int = 100_000,
                    overhead_ratings: int = 100_000,
                    overhead_repeats: int = 3) -> dict[str, Any]:
    """Run the four measurements (module doc); write ``results.json`` to ``out_dir`` and
    to ``json_path`` when given; return the results."""
    import contextlib

    from stream import data
    from stream.kafka.broker import EmbeddedBroker
    from stream.kafka.producers import replay_events
    from stream.settings import load_settings

    started = time.perf_counter()
    load_start = list(os.getloadavg())

    def say(msg: str) -> None:
        if progress:
            print(f"[bench {time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    # The workers are `fairstream worker` processes: they refuse the built-in keys.
    settings = run_key(settings or load_settings())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data.fetch(settings.data.cache_dir, ("ml100k",))
    ml = data.load_movielens(settings.data.cache_dir)
    events = list(replay_events(ml, limit=ratings))
    result: dict[str, Any] = {"ratings": ratings, "events": len(events),
                              "cpus": os.cpu_count(),
                              "partitions": settings.kafka.events_partitions}
    with contextlib.ExitStack() as stack:
        broker_pid = None
        if bootstrap is None:
            broker = stack.enter_context(EmbeddedBroker(log_path=out / "broker.log"))
            bootstrap, broker_pid = broker.bootstrap, broker.pid
        runs: dict[str, dict[str, Any]] = {}
        for n in workers:
            say(f"{n} worker(s), exchange on: {len(events)} events")
            runs[str(n)] = _throughput(settings, bootstrap, events, n, True, out, broker_pid)
            say(f"  {runs[str(n)]['events_per_s']:.0f} events/s")
        # The exchange's overhead: one worker, exchange on and off, each over a backlog
        # produced before it starts (a longer one: the whole window is learning), in
        # ``overhead_repeats`` pairs ordered on/off, off/on, ... so that a drift of the
        # machine's load between runs does not land on one side.
        backlog = list(replay_events(ml, limit=overhead_ratings))
        pairs: list[dict[bool, dict[str, Any]]] = []
        for i in range(overhead_repeats):
            pair = {}
            for exchange in ((True, False) if i % 2 == 0 else (False, True)):
                say(f"pair {i + 1}/{overhead_repeats}: 1 worker, exchange "
                    f"{'on' if exchange else 'off'}, backlog of {len(backlog)} events "
                    f"produced first")
                run = pair[exchange] = _throughput(settings, bootstrap, backlog, 1, exchange,
                                                   out, broker_pid, backlog_first=True)
                say(f"  {run['events_per_s']:.0f} events/s, "
                    f"{run['worker_cpu_ms_per_1k_events']:.0f} ms CPU per 1k events")
            pairs.append(pair)
        say(f"restore {restore_users} profiles from the changelog")
        restore = _changelog_restore(settings, bootstrap, restore_users)
        result["restore_profiles_per_s"] = restore["profiles_per_s"]
        result["restore_s"] = restore["seconds"]
        result["restore_profiles"] = restore_users
    result["events_per_s_by_workers"] = {n: r["events_per_s"] for n, r in runs.items()}
    result["cpu_by_workers"] = {n: r["cpu"] for n, r in runs.items()}
    result["wall_s_by_workers"] = {n: r["wall_s"] for n, r in runs.items()}
    result["publish_s_by_workers"] = {n: r["publish_s"] for n, r in runs.items()}
    result.update(_overhead(pairs))
    result["overhead_events"] = len(backlog)
    result["load_average"] = {"start": load_start, "end": list(os.getloadavg())}

    say(f"checkpoints at {users} users")
    ck = _checkpoint_costs(settings, users, out)
    result["checkpoint_s_by_users"] = {str(u): c["checkpoint_s"] for u, c in ck.items()}
    result["checkpoint_bytes_by_users"] = {str(u): c["checkpoint_bytes"] for u, c in ck.items()}
    result["full_checkpoint_s_by_users"] = {str(u): c["full_checkpoint_s"] for u, c in ck.items()}
    result["full_checkpoint_bytes_by_users"] = {str(u): c["full_checkpoint_bytes"]
                                                for u, c in ck.items()}
    result["delta_s_by_users"] = {str(u): c["delta_s"] for u, c in ck.items()}
    result["delta_bytes_by_users"] = {str(u): c["delta_bytes"] for u, c in ck.items()}
    result["restore_from_deltas_profiles_per_s"] = max(
        c["fold_profiles_per_s"] for c in ck.values())
    result["restore_from_checkpoint_profiles_per_s"] = max(
        c["checkpoint_restore_profiles_per_s"] for c in ck.values())
    result["seconds"] = time.perf_counter() - started
    text = json.dumps(result, indent=2) + "\n"
    (out / "results.json").write_text(text)
    if json_path is not None:
        Path(json_path).write_text(text)
    say(f"wrote {out / 'results.json'}")
    return result


# -- throughput -----------------------------------------------------------------------------

def _overhead(pairs: list[dict[bool, dict[str, Any]]]) -> dict[str, Any]:
    """The exchange's overhead from on/off pairs: per pair and the median (headline keys).

    >>> run = lambda eps, ms: {"events_per_s": eps, "worker_cpu_ms_per_1k_events": ms,
    ...                        "cpu": {}}
    >>> got = _overhead([{True: run(90, 22), False: run(100, 20)},
    ...                  {True: run(95, 21), False: run(100, 20)},
    ...                  {True: run(100, 20), False: run(80, 20)}])
    >>> [round(x, 6) for x in got["stats_overhead_pct_runs"]], round(got["stats_overhead_pct"], 6)
    ([10.0, 5.0, -25.0], 5.0)
    >>> [round(x, 6) for x in got["stats_overhead_cpu_pct_runs"]]
    [10.0, 5.0, 0.0]
    """
    eps = {x: [p[x]["events_per_s"] for p in pairs] for x in (True, False)}
    ms = {x: [p[x]["worker_cpu_ms_per_1k_events"] for p in pairs] for x in (True, False)}
    pct = [100.0 * (1.0 - on / off) for on, off in zip(eps[True], eps[False], strict=True)]
    cpu_pct = [100.0 * (on / off - 1.0) for on, off in zip(ms[True], ms[False], strict=True)]
    return {
        # headline figures: medians over the pairs; each pair's in the *_runs lists
        "stats_overhead_pct": float(np.median(pct)),
        "stats_overhead_pct_runs": pct,
        "stats_overhead_cpu_pct": float(np.median(cpu_pct)),
        "stats_overhead_cpu_pct_runs": cpu_pct,
        "events_per_s_one_worker_exchange_on": float(np.median(eps[True])),
        "events_per_s_one_worker_exchange_off": float(np.median(eps[False])),
        "events_per_s_one_worker_runs": {"exchange_on": eps[True], "exchange_off": eps[False]},
        "worker_cpu_ms_per_1k_events": {"exchange_on": float(np.median(ms[True])),
                                        "exchange_off": float(np.median(ms[False]))},
        "cpu_overhead_runs": [{"exchange_on": p[True]["cpu"], "exchange_off": p[False]["cpu"]}
                              for p in pairs],
    }


def _throughput(settings, bootstrap: str, events: list, n: int, exchange: bool, out: Path,
                broker_pid: int | None, backlog_first: bool = False) -> dict[str, Any]:
    """A fresh topic namespace and group, ``n`` worker processes until every record is
    handled; rate and CPU over that window. The backlog goes out once the group is
    stable, or, with ``backlog_first``, before the workers start (then the window
    measures learning alone, not the producer's pace)."""
    from stream.kafka.producers import catalog_items, publish_catalog, publish_events
    from stream.kafka.topics import ensure_topics

    tag = f"bs{n}{'x' if exchange else 'o'}{'b' if backlog_first else ''}-{uuid.uuid4().hex[:6]}"
    s = settings.replace(kafka={"bootstrap": bootstrap, "group_id": tag},
                         topics={"prefix": tag}, finetune={"enabled": False},
                         stats={"exchange": exchange})
    ensure_topics(s)
    from stream import data

    ml = data.load_movielens(s.data.cache_dir)
    publish_catalog(s, catalog_items(ml))
    run_dir = out / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    publish_s = 0.0
    if backlog_first:
        t0 = time.perf_counter()
        publish_events(s, iter(events), progress=False)
        publish_s = time.perf_counter() - t0
    try:
        for i in range(n):
            log_path = run_dir / f"worker-{i}.log"
            logs.append(log_path)
            procs.append(_worker(s, log_path, run_dir / f"worker-{i}.npz"))
        ports = [_port(p, log) for p, log in zip(procs, logs, strict=True)]
        # The backlog goes out once the group is stable (every partition owned, no
        # rebalance pending): the window measures learning, not group joins. The
        # producer shares the machine with the workers while it sends.
        if not backlog_first:
            _wait_stable(procs, logs, s.kafka.events_partitions)
            t0 = time.perf_counter()
            publish_events(s, iter(events), progress=False)
            publish_s = time.perf_counter() - t0
        total = len(events)
        # The window opens at the last poll that saw nothing handled (so it holds the
        # first record: a slight overestimate, one poll interval at most).
        t_first = cpu0 = None
        t_zero, cpu_zero = time.perf_counter(), _cpu(procs, broker_pid)
        while True:
            handled = sum(_handled(port) for port in ports)
            now = time.perf_counter()
            if t_first is None:
                if handled > 0:
                    t_first, cpu0 = t_zero, cpu_zero
                else:
                    t_zero, cpu_zero = now, _cpu(procs, broker_pid)
            if handled >= total:
                t_done, cpu1 = now, _cpu(procs, broker_pid)
                break
            for p, log in zip(procs, logs, strict=True):
                if p.poll() is not None:
                    raise RuntimeError(f"a worker exited:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    wall = t_done - t_first
    cpu = {name: {"cpu_s": round(cpu1[name] - cpu0.get(name, 0.0), 3),
                  "cpu_share": round((cpu1[name] - cpu0.get(name, 0.0)) / wall, 3)}
           for name in cpu1}
    learner_cpu = sum(cpu[f"worker-{i}"]["cpu_s"] for i in range(n))
    return {"events_per_s": total / wall, "wall_s": wall, "cpu": cpu, "publish_s": publish_s,
            "worker_cpu_ms_per_1k_events": 1000.0 * learner_cpu / total * 1000.0}


def _wait_stable(procs, logs: list[Path], partitions: int, timeout_s: float = 300.0) -> None:
    """Until the workers' last assignments (from their logs) split every partition."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        owned, stable = [], True
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"a worker exited:\n{log.read_text()[-3000:]}")
            lines = re.findall(r"(assigned|revoked) \[([\d, ]*)\]", log.read_text())
            if not lines or lines[-1][0] != "assigned":
                stable = False
                break
            owned += [int(p) for p in lines[-1][1].split(",") if p.strip()]
        if stable and sorted(owned) == list(range(partitions)):
            time.sleep(2.0)  # a rebalance that started meanwhile shows in the logs
            again = [re.findall(r"(assigned|revoked) \[", log.read_text()) for log in logs]
            if all(a and a[-1] == "assigned" for a in again):
                return
        time.sleep(0.2)
    raise TimeoutError("the worker group did not settle")


def _worker(s, log_path: Path, checkpoint: Path) -> subprocess.Popen:
    env = settings_env(s.replace(worker={"checkpoint_path": str(checkpoint),
                                         "metrics_port": 0}))
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"], stdout=log,
                                stderr=subprocess.STDOUT, env=env)


def _port(proc: subprocess.Popen, log: Path, timeout_s: float = 300.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = re.search(r"metrics on :(\d+)/metrics", log.read_text())
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"a worker exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"no metrics port in {log}")


def _handled(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(_HANDLED))


def _cpu(procs: list[subprocess.Popen], broker_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of each learner, each fetch process and the broker."""
    out = {}
    for i, p in enumerate(procs):
        sample = proc_sample(p.pid)
        out[f"worker-{i}"] = sample.cpu_s if sample else 0.0
        for j, child in enumerate(child_pids(p.pid)):
            sample = proc_sample(child)
            out[f"worker-{i}-fetch{'' if j == 0 else j}"] = sample.cpu_s if sample else 0.0
    if broker_pid is not None:
        sample = proc_sample(broker_pid)
        out["broker"] = sample.cpu_s if sample else 0.0
    return out


def _changelog_restore(settings, bootstrap: str, n: int) -> dict[str, float]:
    """One partition of ``fairstream.profiles`` holding ``n`` users (384 float32 each),
    restored as a newly assigned partition is."""
    from bandits import SufficientStats
    from learners import ProfileStore
    from stream.core.delta import StatsDelta
    from stream.kafka.profile_changelog import ProfileChangelog
    from stream.kafka.topics import ensure_topics

    tag = f"bsr-{uuid.uuid4().hex[:6]}"
    s = settings.replace(kafka={"bootstrap": bootstrap}, topics={"prefix": tag},
                         finetune={"enabled": False}, stats={"exchange": True})
    ensure_topics(s)
    rng = np.random.default_rng(0)
    changelog = ProfileChangelog(s)
    try:
        for lo in range(0, n, 10_000):
            m = min(10_000, n - lo)
            changelog.write(StatsDelta(
                partition=0, start=lo - 1 if lo else -1, end=lo + m,
                stats=SufficientStats.zeros(1, "fs"), users=[f"u{i}" for i in range(lo, lo + m)],
                means=rng.random((m, 384), dtype=np.float32), weights=np.ones(m),
                last_seen=np.zeros(m)), stats_offset=lo // 10_000)
        changelog.flush()
        store = ProfileStore(emb_dim=384, capacity=n)
        restored = changelog.restore(store, 0, end=n)
        assert len(store) == restored.from_changelog == n
    finally:
        changelog.close()
    return {"profiles_per_s": n / restored.seconds, "seconds": restored.seconds}


# -- checkpoints and restores ---------------------------------------------------------------

class _RandomEncoder:
    """An encoder stand-in: the checkpoint and the restore do not depend on embeddings."""

    dim = 384

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.random.default_rng(len(texts)).normal(size=(len(texts), self.dim)) \
            .astype(np.float32)


def _checkpoint_costs(settings, users: tuple[int, ...], out: Path,
                      touched: int = 1_000) -> dict[int, dict[str, float]]:
    from bandits import HybridStats
    from stream.core.catalog import Catalog
    from stream.core.checkpoint import read_checkpoint
    from stream.core.delta import cut_delta, dump_delta, fold_delta, load_delta
    from stream.core.state import LearningState
    from stream.events import CatalogItem
    from stream.metrics import Metrics
    from stream.worker.checkpointer import Checkpointer

    catalog = Catalog(384)
    catalog.add([CatalogItem(item_id=str(i), text=f"item {i}") for i in range(200)],
                _RandomEncoder())
    results = {}
    rng = np.random.default_rng(0)
    key = settings.policy.signing_key.encode()
    for n in users:
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            s = settings.replace(worker={"checkpoint_path": str(Path(tmp) / "ck.npz")},
                                 features={"profile_capacity": max(n, 1)},
                                 finetune={"enabled": False})
            state = LearningState.fresh(s, catalog)
            ids = [f"u{i}" for i in range(n)]
            state.profiles.put(ids, rng.random((n, 384), dtype=np.float32), np.ones(n),
                               np.zeros(n))
            state.observe_records(0, [], next_offset=n)
            # With the exchange a checkpoint leaves the profiles to their changelog; the
            # full one (every profile) is what a worker without it writes.
            lean = s.replace(stats={"exchange": True},
                             worker={"checkpoint_path": str(Path(tmp) / "lean.npz")})
            t0 = time.perf_counter()
            Checkpointer(lean, Metrics()).checkpoint(state, threading.Lock())
            checkpoint_s = time.perf_counter() - t0
            lean_size = os.path.getsize(lean.worker.checkpoint_path)
            t0 = time.perf_counter()
            Checkpointer(s, Metrics()).checkpoint(state, threading.Lock())
            full_s = time.perf_counter() - t0
            size = os.path.getsize(s.worker.checkpoint_path)
            t0 = time.perf_counter()
            restored = LearningState.from_checkpoint(s, catalog,
                                                     read_checkpoint(s.worker.checkpoint_path))
            restore_s = time.perf_counter() - t0
            assert len(restored.profiles) == n
            del restored
            # The delta of a fixed change: `touched` users' profiles, one partition's join.
            stats = HybridStats.empty(state.policy.dim, state.policy.z, state.fmap.feature_space)
            t0 = time.perf_counter()
            data = dump_delta(cut_delta(state, 0, -1, stats, ids[:touched], []), key=key)
            delta_s = time.perf_counter() - t0
            # Folding deltas of profiles into a fresh state: a restore from Kafka.
            target = LearningState.fresh(s, catalog)
            chunks = [dump_delta(dataclasses.replace(
                cut_delta(state, 0, -1, stats, ids[lo:lo + 10_000], []),
                start=lo - 1 if lo else -1, end=lo + 9_999), key=key)
                for lo in range(0, min(n, 100_000), 10_000)]
            t0 = time.perf_counter()
            for chunk in chunks:  # each starts where the one before ended
                fold_delta(target, load_delta(chunk, key=key))
            fold_s = time.perf_counter() - t0
            folded = len(target.profiles)
        results[n] = {"checkpoint_s": checkpoint_s, "checkpoint_bytes": lean_size,
                      "full_checkpoint_s": full_s, "full_checkpoint_bytes": size,
                      "checkpoint_restore_profiles_per_s": n / restore_s,
                      "delta_s": delta_s, "delta_bytes": len(data),
                      "fold_profiles_per_s": folded / fold_s}
        del state, target
    return results
