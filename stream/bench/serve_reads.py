"""``fairstream bench serve-reads``: what a server reads to keep profiles current, in both
``serve.profiles`` modes, as event volume grows at the same users.

One learning worker (this process) and, per phase, two fresh ``fairstream serve``
processes, one per mode: ``topic`` (the workers' compacted ``fairstream.profiles.serving``)
and ``events`` (every record of ``fairstream.events``). Once both are ready, the phase's
traffic goes to ``fairstream.events``: each of ``users`` users is shown
``impressions × factor`` slates and clicks ``clicks`` of them, so the factors (×1, ×10
by default) add impressions, the bulk of real traffic, at the same users and clicks.
The phase ends when the worker has read every event and written its users' serving
profiles, and each server has read everything its source holds.

Per phase and mode: records and bytes the server read (its
``fairstream_serve_follow_{records,bytes}_total``), the profiles it holds, its resident
memory at the end and its growth over the phase, its CPU seconds (idle polling
included: the phases differ in length); beside them the broker's CPU seconds over the
phase (when the bench started the broker; it also serves the producer and the worker)
and the host's load average; and the time the worker's loop spent on serving profiles
(marking users, building and sending records).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from kafka import KafkaConsumer, TopicPartition

from learners import Encoder
from stream.bench.procstats import load_average, proc_sample
from stream.bench.serve import published_catalog
from stream.core.keys import run_key
from stream.events import Click, EventCodec, Impression
from stream.kafka.broker import free_port
from stream.kafka.producers import make_producer
from stream.privacy import Pseudonymizer
from stream.settings import Settings, settings_env
from stream.worker import Worker, WorkerThread

MODES = ("topic", "events")
_SAMPLE = re.compile(r'^(fairstream_serve_follow_(?:records|bytes)_total)\{topic="([^"]+)"\} '
                     r'(\S+)$', re.M)
_HELD = re.compile(r"^fairstream_serve_profile_users (\S+)$", re.M)


class _Server:
    """One ``fairstream serve`` process in a given profile mode."""

    def __init__(self, settings: Settings, mode: str, log_dir: Path) -> None:
        self.mode = mode
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = settings_env(settings.replace(serve={"profiles": mode}))
        self.log = (log_dir / f"serve-{mode}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "serve", "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the {self.mode} server exited ({self.proc.returncode}); "
                               f"see {self.log.name}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def read(self) -> dict[str, float]:
        """Records and bytes read so far, all topics together."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        out = {"records": 0.0, "bytes": 0.0}
        for name, _topic, value in _SAMPLE.findall(text):
            out["records" if name.endswith("records_total") else "bytes"] += float(value)
        held = _HELD.search(text)
        out["profiles"] = float(held.group(1)) if held else 0.0
        return out

    def sample(self) -> dict[str, float]:
        s = proc_sample(self.proc.pid)
        return {**self.read(), "rss_bytes": float(s.rss_bytes), "cpu_s": s.cpu_s}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _end(settings: Settings, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench serve-reads: no {what} after {timeout_s:.0f} s")
        time.sleep(0.1)


def run_serve_reads_bench(settings: Settings | None = None, *, bootstrap: str | None = None,
                          users: int = 5_000, impressions: int = 4, clicks: int = 2,
                          factors: tuple[int, ...] = (1, 10), n_items: int = 300,
                          encoder: Encoder | None = None,
                          progress: bool = True) -> dict[str, Any]:
    """Run the phases (see module doc); returns the figures per factor and mode."""
    if not 0 < clicks <= impressions:
        raise ValueError("clicks must be in 1..impressions")
    # `fairstream serve` processes refuse the built-in keys.
    settings = run_key(settings or Settings())
    run = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="fairstream-bench-serve-reads-"))
    settings = settings.replace(topics={"prefix": f"bench-{run}"},
                                kafka={"group_id": f"bench-{run}"},
                                worker={"checkpoint_path": str(tmp / "checkpoint.npz"),
                                        "metrics_port": 0},
                                finetune={"enabled": False})

    def say(msg: str) -> None:
        if progress:
            print(f"bench serve-reads: {msg}", file=sys.stderr, flush=True)

    result: dict[str, Any] = {"users": users, "impressions_per_user": impressions,
                              "clicks_per_user": clicks, "partitions":
                              settings.kafka.events_partitions,
                              "load_average_start": load_average(), "phases": {}}
    with ExitStack() as stack:
        broker_pid = None
        if bootstrap is None:
            from stream.kafka.broker import EmbeddedBroker

            broker = stack.enter_context(EmbeddedBroker(log_path=tmp / "broker.log"))
            bootstrap, broker_pid = broker.bootstrap, broker.pid
        settings = settings.replace(kafka={"bootstrap": bootstrap})
        encoder, items = published_catalog(settings, encoder, n_items)
        say(f"{len(items)} items; starting the worker")
        worker = Worker(settings, encoder=encoder)
        running = WorkerThread(worker).start(timeout_s=None)
        stack.callback(running.stop)
        edge = Pseudonymizer.from_settings(settings.privacy)
        ids = [edge.user(f"bench-user-{u}") for u in range(users)]
        item_ids = [i.item_id for i in items]
        codec = EventCodec(settings.events.max_bytes, settings.events.max_slate)
        producer = make_producer(settings)
        stack.callback(producer.close)
        produced = 0
        for factor in factors:
            servers = {mode: _Server(settings, mode, tmp) for mode in MODES}
            try:
                _wait(lambda servers=servers: all(s.ready() for s in servers.values()), 300,
                      "ready servers")
                before = {m: s.sample() for m, s in servers.items()}
                broker0 = proc_sample(broker_pid) if broker_pid else None
                busy0 = worker.serving.busy_s
                load0, t0 = load_average(), time.monotonic()
                n_events = 0
                say(f"×{factor}: {users * impressions * factor:,} impressions, "
                    f"{users * clicks:,} clicks")
                for r in range(impressions * factor):
                    now = time.time()
                    for u, user in enumerate(ids):
                        rid = f"{run}-{factor}-{r}-{u}"
                        shown = [item_ids[(u * 7 + r * 3 + j) % len(item_ids)]
                                 for j in range(5)]
                        producer.send(settings.topics.events, key=user.encode(),
                                      value=codec.encode(Impression(
                                          event_id=f"i-{rid}", request_id=rid, ts=now,
                                          user_id=user, items=shown, propensities=[1.0] * 5,
                                          policy_version="bench", user={})))
                        n_events += 1
                        if r < clicks:
                            producer.send(settings.topics.events, key=user.encode(),
                                          value=codec.encode(Click(
                                              event_id=f"c-{rid}", request_id=rid, ts=now,
                                              user_id=user, item_id=shown[0])))
                            n_events += 1
                producer.flush()
                produced += n_events
                _wait(lambda produced=produced: worker.report.events >= produced
                      and not worker.serving.pending, 600, "worker caught up")
                worker.serving.settle()
                written = _end(settings, settings.topics.serving_profiles)
                _wait(lambda topic=servers["topic"], written=written:
                      topic.read()["records"] >= written, 300, "topic server caught up")
                _wait(lambda events=servers["events"], want=before["events"]["records"]
                      + n_events: events.read()["records"] >= want, 300,
                      "events server caught up")
                after = {m: s.sample() for m, s in servers.items()}
                broker1 = proc_sample(broker_pid) if broker_pid else None
                phase: dict[str, Any] = {
                    "events_produced": n_events, "seconds": round(time.monotonic() - t0, 2),
                    "load_average": [load0, load_average()],
                    "broker_cpu_s": round(broker1.cpu_s - broker0.cpu_s, 2)
                    if broker0 and broker1 else None,
                    # the worker's loop time writing serving profiles in the phase
                    "worker_serving_s": round(worker.serving.busy_s - busy0, 3)}
                for m in MODES:
                    b, a = before[m], after[m]
                    phase[m] = {"records_read": int(a["records"] - b["records"]),
                                "bytes_read": int(a["bytes"] - b["bytes"]),
                                "profiles_held": int(a["profiles"]),
                                "rss_mb": round(a["rss_bytes"] / 2**20, 1),
                                "rss_growth_mb": round((a["rss_bytes"] - b["rss_bytes"])
                                                       / 2**20, 1),
                                "cpu_s": round(a["cpu_s"] - b["cpu_s"], 2)}
                result["phases"][f"x{factor}"] = phase
                say(f"×{factor}: {phase}")
            finally:
                for s in servers.values():
                    s.stop()
    result["load_average_end"] = load_average()
    for factor in factors:
        p = result["phases"][f"x{factor}"]
        for m in MODES:
            result[f"{m}_records_read_x{factor}"] = p[m]["records_read"]
            result[f"{m}_mb_read_x{factor}"] = round(p[m]["bytes_read"] / 2**20, 2)
            result[f"{m}_rss_mb_x{factor}"] = p[m]["rss_mb"]
        result[f"broker_cpu_s_x{factor}"] = p["broker_cpu_s"]
        result[f"worker_serving_s_x{factor}"] = p["worker_serving_s"]
    return result
