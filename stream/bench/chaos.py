"""``fairstream chaos``: one MovieLens replay with hostile messages interleaved, the worker
SIGKILLed again and again, and the end compared with one clean run over the same events.

The replay and the hostile messages (:mod:`stream.bench.hostile`) are shuffled into one
sequence and produced in phases; before each phase a ``fairstream worker`` process is
(re)started, and after it the process is killed with SIGKILL where the plan says:

* ``after_checkpoint`` — the phase tops the records past the checkpoint up to exactly
  one checkpoint interval, so the worker writes its next checkpoint once it has handled
  all of them and not before; the kill follows that checkpoint;
* ``mid_batch`` — the phase keeps the records past the checkpoint below an interval:
  the worker learns all of it (``/metrics``) without checkpointing, then dies;
* ``publish`` — the kill follows the version record a publish writes before it sends
  its bundle (polled every few ms, so it usually lands before the bundle is acked; the
  exact moment is the scheduler's, not the test's);
* ``finetune`` — fine-tunes are on for this run only (after a few rows, and too long to
  finish): the kill lands while the fine-tune's child process trains;
* ``random`` — after the worker has handled a first record, at a seeded random delay.

A last run with ``--exit-when-idle`` must exit 0 with everything handled. Then:
A and b as a clean :class:`~stream.core.state.LearningState` fed the valid events ends
with (to 1e-9), the same update count, every hostile record on the DLQ with its shape's
reason, policy versions that only go up, and every restart handling records (no crash
loop). The broker is whatever ``settings.kafka.bootstrap`` names; the CLI starts an
embedded one.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2

from stream.bench.hostile import SHAPES, hostile_messages
from stream.core.bundle import load_bundle
from stream.core.catalog import Catalog
from stream.core.checkpoint import read_checkpoint
from stream.core.keys import run_key
from stream.core.state import LearningState
from stream.data import MovieLens
from stream.events import Event, EventCodec
from stream.kafka.producers import catalog_items, publish_catalog, replay_events
from stream.kafka.topics import ensure_topics
from stream.settings import Settings, settings_env

KILL_KINDS = ("after_checkpoint", "mid_batch", "publish", "finetune", "random")


@dataclass(frozen=True)
class ChaosPlan:
    """How many kills of each kind (cycled in :data:`KILL_KINDS` order), and the stream.

    >>> ChaosPlan(after_checkpoint=2, mid_batch=1, publish=0, finetune=0, random=1).kills()
    ['after_checkpoint', 'mid_batch', 'random', 'after_checkpoint']
    """

    after_checkpoint: int = 5
    mid_batch: int = 5
    publish: int = 3
    finetune: int = 1
    random: int = 8
    ratings: int = 3000
    hostile: int = 600
    huge: int = 2  # hostile messages over 1 MiB
    interval: int = 500  # worker.checkpoint_every_events
    phase: int = 100  # records per phase of the kinds that must not checkpoint
    seed: int = 0

    def kills(self) -> list[str]:
        left = {k: getattr(self, k) for k in KILL_KINDS}
        order: list[str] = []
        while any(left.values()):
            for kind in KILL_KINDS:
                if left[kind]:
                    order.append(kind)
                    left[kind] -= 1
        return order


class ChaosError(AssertionError):
    """The worker did not behave: it died on its own, or a phase never completed."""


class _Run:
    """One ``fairstream worker`` process, its log, and its /metrics port."""

    def __init__(self, settings: Settings, log_path: Path, exit_when_idle: float | None = None):
        self.log_path = log_path
        idle = [] if exit_when_idle is None else ["--exit-when-idle", str(exit_when_idle)]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker", *idle],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         env=settings_env(settings))
        self.port: int | None = None

    def wait_for(self, what: str, condition: Callable[[], Any], timeout_s: float = 180.0,
                 every_s: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout_s
        while not (value := condition()):
            if self.proc.poll() is not None:
                raise ChaosError(f"worker exited ({self.proc.returncode}) waiting for {what}:\n"
                                 + self.log_path.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise ChaosError(f"timed out waiting for {what}")
            time.sleep(every_s)
        return value

    def handled(self) -> int:
        """Records handled since this process started: consumed, rejected, duplicate."""
        if self.port is None:
            match = re.search(r"metrics on :(\d+)/metrics",
                              self.log_path.read_text(errors="replace"))
            if match is None:
                return 0
            self.port = int(match.group(1))
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith(("fairstream_events_consumed_total{",
                                           "fairstream_events_rejected_total{",
                                           "fairstream_events_duplicate_total "))))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def children(self) -> list[tuple[int, str]]:
        """(pid, command line) of this process's live children (Linux /proc)."""
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    out.append((int(entry.name), cmd))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
        return out


def _checkpointed(path: str) -> int:
    return sum(read_checkpoint(path).offsets.values()) if os.path.exists(path) else 0


def _published(path: Path) -> int:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return 0


def _partition(key: bytes, n: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % n  # Kafka's keyed default partitioner


def clean_run(settings: Settings, ml: MovieLens, encoder: Any,
              events: list[Event]) -> LearningState:
    """The valid events fed straight into one LearningState, each on the partition the
    producer's partitioner picks, as one uninterrupted worker would learn them."""
    catalog = Catalog(encoder.dim)
    catalog.add(catalog_items(ml), encoder)
    state = LearningState.fresh(settings, catalog)
    n, seen = settings.kafka.events_partitions, set()
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            state.learn(state.observe(event, _partition(event.user_id.encode(), n)))
    return state


def _read(settings: Settings, topic: str, partitions: int) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap,
                             enable_auto_commit=False, fetch_max_bytes=64 << 20,
                             max_partition_fetch_bytes=16 << 20)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    out, quiet_since = [], time.monotonic()
    while time.monotonic() - quiet_since < 2.0:
        for records in consumer.poll(200).values():
            out.extend(records)
            quiet_since = time.monotonic()
    consumer.close()
    return out


def _drive(kind: str, run: _Run, produce: Callable[[int], int], plan: ChaosPlan,
           rng: np.random.Generator, lag: int, ck_path: str, version_path: Path) -> None:
    """Produce one phase for ``run`` and return when its kill is due (see module doc)."""
    started_ck, published = _checkpointed(ck_path), _published(version_path)
    short = min(plan.phase, plan.interval - 1 - lag)  # never fills an interval
    if kind == "after_checkpoint":
        # The records past the checkpoint are exactly one interval: the worker's next
        # checkpoint comes once it has handled them all.
        produced = produce(plan.interval - lag)
        run.wait_for("the checkpoint of the phase", lambda: _checkpointed(ck_path) == produced)
    elif kind == "mid_batch":
        produced = produce(short)
        run.wait_for("/metrics", lambda: run.handled() == produced - started_ck, every_s=0.1)
        if _checkpointed(ck_path) != started_ck:
            raise ChaosError("a mid-batch phase was checkpointed")
    elif kind == "publish":
        # Past the one every start makes: a publish of rows learned in this run.
        produce(short)
        run.wait_for("a publish", lambda: _published(version_path) > published + 1,
                     every_s=0.002)
    elif kind == "finetune":
        produce(short)
        run.wait_for("a fine-tune child", lambda: [
            pid for pid, cmd in run.children() if "stream.kafka.fetch" not in cmd])
    else:
        produce(int(rng.integers(1, max(2, short + 1))))
        run.wait_for("a first record", lambda: run.handled() > 0, every_s=0.1)
        time.sleep(float(rng.uniform(0.0, 1.0)))


def run_chaos(settings: Settings, ml: MovieLens, encoder: Any, out_dir: str | Path,
              plan: ChaosPlan = ChaosPlan(), log: Callable[[str], None] = lambda _: None,
              ) -> dict[str, Any]:
    """Run the plan on the broker ``settings`` names; returns the summary (see module doc).
    ``settings`` should carry a topic prefix and group of their own."""
    out = Path(out_dir).resolve()  # the checkpoint path also marks the run's processes
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(plan.seed)
    ck_path = str(out / "checkpoint.npz")
    settings = run_key(settings).replace(
        worker={"checkpoint_path": ck_path, "checkpoint_every_events": plan.interval,
                "checkpoint_every_s": 3600.0, "metrics_port": 0, "poll_max_records": 100},
        policy={"publish_every_updates": 10, "publish_every_s": 3600.0},
        finetune={"enabled": False}, model={"device": "cpu"},
        # Impressions close a minute of event time after they are shown, so every phase
        # learns rows (and publishes) even when its ratings are close together in time.
        events={"attribution_window_s": 60.0})
    finetuning = settings.replace(finetune={"enabled": True, "min_rows": 16, "batch_size": 16,
                                            "every_updates": 16, "steps": 10**7})
    version_path = Path(ck_path + ".published")
    n_parts = settings.kafka.events_partitions
    ensure_topics(settings)
    publish_catalog(settings, catalog_items(ml))

    # One sequence: the replay with the hostile messages at random places in it.
    codec = EventCodec(settings.events.max_bytes, settings.events.max_slate)
    valid = list(replay_events(ml, limit=plan.ratings))
    hostile = hostile_messages(plan.hostile, rng, settings.events.max_bytes, huge=plan.huge)
    seq: list[tuple[str | None, bytes, bytes | None]] = [
        (None, e.user_id.encode(), codec.encode(e)) for e in valid]
    for j, (shape, value) in zip(sorted(rng.choice(len(seq) + len(hostile), len(hostile),
                                                   replace=False)), hostile, strict=True):
        seq.insert(int(j), (shape, f"chaos-{j}".encode(), value))
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all",
                             linger_ms=10, max_request_size=8 << 20,
                             max_in_flight_requests_per_connection=1)
    sent: list[tuple[str, Any]] = []  # (shape, future) of every hostile record
    produced = 0

    def produce(n: int) -> int:
        """Produce the next ``n`` records of the sequence; returns how many are out."""
        nonlocal produced
        for shape, key, value in seq[produced:produced + n]:
            future = producer.send(settings.topics.events, key=key, value=value)
            if shape is not None:
                sent.append((shape, future))
        producer.flush()
        produced = min(len(seq), produced + n)
        return produced

    kills: list[dict[str, Any]] = []
    orphans = 0
    t0 = time.monotonic()
    try:
        for i, kind in enumerate(plan.kills()):
            lag = produced - _checkpointed(ck_path)
            if lag >= plan.interval:
                raise ChaosError(f"before kill {i}: {lag} records past the checkpoint, "
                                 f"more than an interval ({plan.interval})")
            started_ck = _checkpointed(ck_path)
            run = _Run(finetuning if kind == "finetune" else settings, out / f"worker-{i}.log")
            _drive(kind, run, produce, plan, rng, lag, ck_path, version_path)
            # A publish kill lands at once; the others may take a scrape's time first.
            handled = -1 if kind == "publish" else run.handled()
            run.kill()
            kills.append({"kind": kind, "handled": handled, "produced": produced,
                          "checkpointed_before": started_ck,
                          "checkpointed_after": _checkpointed(ck_path)})
            left, waited = _reap(_processes_of(ck_path))
            orphans += left
            kills[-1]["children_exit_s"] = round(waited, 2)
            log(f"kill {i + 1}: {kind}, handled {handled}, checkpoint "
                f"{started_ck} -> {kills[-1]['checkpointed_after']} of {produced} produced; "
                f"children gone after {waited:.1f} s")

        produce(len(seq))
        final = _Run(settings, out / "worker-final.log", exit_when_idle=3.0)
        exit_code = final.proc.wait(timeout=600)
        final_report = next((json.loads(line) for line in reversed(
            (out / "worker-final.log").read_text(errors="replace").splitlines())
            if line.startswith('{"events"')), None)
    finally:
        producer.close()
    elapsed = time.monotonic() - t0

    # The clean run, and what the chaos run ended with.
    ref = clean_run(settings, ml, encoder, valid)
    ck = read_checkpoint(ck_path)
    state = LearningState.from_checkpoint(settings, ref.catalog, ck)
    a, b = state.policy, ref.policy
    # A = λI + Σφφᵀ and b = Σrφ of every policy are its statistics' xtx and xty; a
    # hybrid's per-item blocks are compared item by item.
    sa, sb = a.stats, b.stats
    diff_a = float(np.max(np.abs(sa.xtx - sb.xtx)))
    diff_b = float(np.max(np.abs(sa.xty - sb.xty)))
    diff_items = _item_blocks_diff(sa, sb)

    # Every hostile record on the DLQ, with its shape's reason.
    where = {}
    for shape, future in sent:
        meta = future.get(timeout=30)
        where[f"{settings.topics.events}/{meta.partition}/{meta.offset}"] = shape
    dead: dict[str, set[str]] = {}
    dlq = _read(settings, settings.topics.dlq, n_parts)
    for record in dlq:
        headers = dict(record.headers)
        dead.setdefault(headers["source"].decode(), set()).add(headers["reason"].decode())
    missing = {s: 0 for s in SHAPES}
    wrong = {s: 0 for s in SHAPES}
    for source, shape in where.items():
        if source not in dead:
            missing[shape] += 1
        elif SHAPES[shape][0] not in dead[source]:
            wrong[shape] += 1
    versions = [load_bundle(r.value, key=settings.policy.signing_key.encode(),
                            dim=settings.features.dim).version
                for r in _read(settings, settings.topics.policies, 1)]

    # A publish kill follows a publish of rows learned in that run: progress by itself.
    stalls = [k for k in kills if k["handled"] == 0]
    summary = {
        "kills": len(kills),
        "kills_by_kind": {k: sum(1 for x in kills if x["kind"] == k) for k in KILL_KINDS},
        "records": len(seq), "valid_events": len(valid), "hostile": len(hostile),
        "hostile_shapes": len({s for s, _ in hostile}),
        "hostile_over_1mib": sum(1 for _, v in hostile if v is not None and len(v) > 1 << 20),
        "final_exit_code": exit_code, "final_report": final_report,
        "checkpoint_covers": sum(ck.offsets.values()),
        "n_updates": a.n_updates, "n_updates_clean": b.n_updates,
        "max_abs_diff_A": diff_a, "max_abs_diff_b": diff_b, "max_abs_diff_items": diff_items,
        "open_impressions": len(state.joiner), "open_impressions_clean": len(ref.joiner),
        "dlq_records": len(dlq), "dlq_hostile_missing": sum(missing.values()),
        "dlq_hostile_wrong_reason": sum(wrong.values()),
        "dlq_missing_by_shape": {s: n for s, n in missing.items() if n},
        "dlq_wrong_reason_by_shape": {s: n for s, n in wrong.items() if n},
        "dlq_markers": sum(1 for r in dlq if dict(r.headers).get("marker")),
        "policy_versions": len(versions),
        "policy_versions_increasing": all(x < y for x, y in itertools.pairwise(versions)),
        "runs_without_progress": len(stalls),
        "orphaned_children": orphans,
        "elapsed_s": round(elapsed, 1),
        "kill_log": kills,
    }
    summary["ok"] = bool(
        exit_code == 0 and summary["checkpoint_covers"] == len(seq)
        and a.n_updates == b.n_updates > 0 and diff_a <= 1e-9 and diff_b <= 1e-9
        and diff_items <= 1e-9
        and len(state.joiner) == len(ref.joiner) and not summary["dlq_hostile_missing"]
        and not summary["dlq_hostile_wrong_reason"] and summary["policy_versions_increasing"]
        and not stalls and not orphans)
    return summary


def _processes_of(ck_path: str) -> list[int]:
    """Live processes (other than this one) whose environment names ``ck_path`` as the
    worker's checkpoint: a killed worker's fetch process and fine-tune, if still there."""
    mark = f"FAIRSTREAM_WORKER__CHECKPOINT_PATH={ck_path}\0".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if mark in (entry / "environ").read_bytes() and _alive(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile, or not ours
    return pids


def _reap(pids: list[int], timeout_s: float = 120.0) -> tuple[int, float]:
    """Wait for a killed worker's children (the fetch process, a fine-tune) to exit on
    their own, as they must once their parent's pipe closes (a fine-tune child notices
    only once its imports are done: tens of seconds on a loaded machine). Returns how many
    did not within ``timeout_s`` (those are killed, so one run's leftovers cannot skew
    the next), and the seconds waited."""
    t0 = time.monotonic()
    left = pids
    while left and time.monotonic() - t0 < timeout_s:
        left = [pid for pid in left if _alive(pid)]
        time.sleep(0.05)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return len(left), time.monotonic() - t0


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run_chaos_embedded(settings: Settings, out_dir: str | Path = "runs/chaos",
                       plan: ChaosPlan = ChaosPlan(), progress: bool = True) -> dict[str, Any]:
    """``fairstream chaos``: :func:`run_chaos` on an embedded broker of its own, with
    MovieLens-100K (fetched if absent) and the MiniLM encoder on the CPU."""
    import shutil

    from learners import Encoder
    from stream import data
    from stream.kafka.broker import EmbeddedBroker

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data.fetch(settings.data.cache_dir, ("ml100k",))
    ml = data.load_movielens(settings.data.cache_dir)
    encoder = Encoder(cache_dir=settings.embedding_cache_dir, device="cpu",
                      batch_size=settings.model.batch_size)
    with EmbeddedBroker(log_path=out / "broker.log") as broker:
        # A dead worker's group membership ends with its session: short, so restarts join
        # fast.
        settings = settings.replace(kafka={"bootstrap": broker.bootstrap,
                                           "session_timeout_ms": 6000})
        say = (lambda line: print(f"fairstream chaos: {line}", file=sys.stderr, flush=True)) \
            if progress else (lambda _: None)
        return run_chaos(settings, ml, encoder, out, plan, log=say)


def _item_blocks_diff(sa: Any, sb: Any) -> float:
    """Largest difference between two hybrids' per-item blocks (0 for shared-only
    policies; infinite when they hold different items)."""
    if not hasattr(sa, "item_ids"):
        return 0.0
    if sorted(sa.item_ids) != sorted(sb.item_ids):
        return float("inf")
    if not sa.item_ids:
        return 0.0
    order = {i: j for j, i in enumerate(sb.item_ids)}
    idx = [order[i] for i in sa.item_ids]
    return float(max(np.max(np.abs(sa.item_xz - sb.item_xz[idx])),
                     np.max(np.abs(sa.item_zr - sb.item_zr[idx])),
                     np.max(np.abs(sa.item_n - sb.item_n[idx]))))
