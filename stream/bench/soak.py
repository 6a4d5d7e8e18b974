"""``fairstream bench soak``: worker and server in processes of their own under steady load,
sampled for leaks.

On an :class:`~stream.kafka.broker.EmbeddedBroker` (as ``fairstream demo``
runs one), ``fairstream worker`` and ``fairstream serve`` run as child
processes, as in production. This process drives them on 127.0.0.1 for
``minutes``:

* a replay producer at ``event_rate`` events/s: MovieLens-100K in timestamp
  order, stamped with the wall clock as it is sent and looped with fresh
  event and request ids when it runs out;
* ``request_rate`` HTTP requests/s, alternating ``POST /recommend`` (100
  random candidates, one of 2,000 users) and ``POST /feedback`` (a click on
  the first item of the previous answer).

Every ``interval_s`` it samples RSS, open fds, threads and CPU seconds of the
worker, its fetch process, the server, the broker and itself (the load
driver, :mod:`stream.bench.procstats`), and the worker's consumer lag and
events consumed from its ``/metrics``. After ``warmup_min`` it fits the
least-squares slope per minute of each series, and the RSS growth from the
minute after warm-up to the last minute (medians over each, so one sample
taken during a fine-tune does not decide it). A process that dies fails the
run (:class:`SoakFailure`, with the tail of its log). At the end the server
and the worker get SIGTERM and must exit 0, and no child may be left.

Two bounded structures are sized so that they are full before the warm-up
ends, since a soak looks for growth in a steady state: the attribution
window is ``attribution_window_s`` (60 s of event time by default, not the
production 1,800 s: the reward join holds every impression of its window,
and with 1,800 s it would still be filling at the end of a 30-minute run),
and the dedup memory keeps ``dedup_capacity`` ids (100,000 by default, not
500,000: about 160 bytes an id, so the default's 80 MB would fill for 19
minutes at 440 events/s). Every other setting is the one given.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from stream.bench.hoststats import CpuWindow
from stream.bench.procstats import (
    alive,
    child_pids,
    cmdline,
    load_average,
    proc_sample,
    slope_per_minute,
)
from stream.exceptions import FairstreamError
from stream.settings import Settings

__all__ = ["SoakFailure", "run_soak", "summarize"]

ATTRIBUTION_WINDOW_S = 60.0
DEDUP_CAPACITY = 100_000
#: Processes whose RSS growth the target applies to (the broker and the driver are not ours
#: to judge, but are reported).
JUDGED = ("worker", "fetch", "server")
RSS_GROWTH_TARGET_PCT = 5.0


class SoakFailure(FairstreamError):
    """A process died, a load thread failed, or a stop was not clean."""


def child_env(settings: Settings) -> dict[str, str]:
    """This process's environment with ``settings`` as ``FAIRSTREAM_*`` overrides: every
    value that differs from the defaults, and no inherited ``FAIRSTREAM_*`` variable.

    >>> env = child_env(Settings().replace(kafka={"bootstrap": "127.0.0.1:1"}))
    >>> env["FAIRSTREAM_KAFKA__BOOTSTRAP"], "FAIRSTREAM_KAFKA__GROUP_ID" in env
    ('127.0.0.1:1', False)
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRSTREAM_")}
    mine, default = msgspec.to_builtins(settings), msgspec.to_builtins(Settings())
    for section, values in mine.items():
        for key, value in values.items():
            if value != default[section][key]:
                shown = str(value).lower() if isinstance(value, bool) else str(value)
                env[f"FAIRSTREAM_{section.upper()}__{key.upper()}"] = shown
    return env


def _metric_sums(text: str) -> dict[str, float]:
    """Prometheus text format → sum over label sets, per sample name."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.partition("{")[0]
        sums[name] = sums.get(name, 0.0) + float(value)
    return sums


def _scrape(port: int) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return _metric_sums(r.read().decode())
    except OSError:
        return None


class _Child:
    """A ``fairstream`` subcommand in a process of its own, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "stream.cli", *args], env=env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def tail(self, n: int = 15) -> str:
        lines = self.log.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(f"    {line}" for line in lines)

    def check(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise SoakFailure(f"{self.name} (pid {self.proc.pid}) exited with code {code}; "
                              f"the end of {self.log}:\n{self.tail()}")

    def stop(self, timeout_s: float) -> int:
        """SIGTERM, then wait; a process that does not exit in time is killed (→ -9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class _Load(threading.Thread):
    """A paced loop in a thread; ``error`` holds what stopped it early."""

    def __init__(self, name: str, rate: float, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.rate, self.stop_event = rate, stop
        self.sent = 0
        self.failed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.setup()
            t0 = time.monotonic()
            while not self.stop_event.is_set():
                due = int((time.monotonic() - t0) * self.rate)
                while self.sent < due and not self.stop_event.is_set():
                    self.one()
                    self.sent += 1
                self.stop_event.wait(0.01)
        except BaseException as exc:  # surfaced by the sampler loop, which fails the run
            self.error = exc
        finally:
            self.teardown()

    def setup(self) -> None: ...

    def one(self) -> None: ...

    def teardown(self) -> None: ...


class _Replay(_Load):
    """MovieLens replay at a fixed rate, stamped now, looped with fresh ids."""

    def __init__(self, settings: Settings, ml: Any, rate: float, stop: threading.Event) -> None:
        super().__init__("soak-replay", rate, stop)
        self.settings, self.ml = settings, ml
        self.lap = 0

    def setup(self) -> None:
        from stream.events import EventCodec
        from stream.kafka.producers import make_producer

        self.codec = EventCodec(self.settings.events.max_bytes, self.settings.events.max_slate)
        self.producer = make_producer(self.settings)
        self.events = self._events()

    def _events(self):
        from stream.events import Click
        from stream.kafka.producers import replay_events

        while True:
            for e in replay_events(self.ml):
                # A click follows its impression by 1 s of event time, as in the replay.
                yield msgspec.structs.replace(
                    e, event_id=f"soak{self.lap}-{e.event_id}",
                    request_id=f"soak{self.lap}-{e.request_id}",
                    ts=time.time() + (1.0 if isinstance(e, Click) else 0.0))
            self.lap += 1

    def one(self) -> None:
        e = next(self.events)
        future = self.producer.send(self.settings.topics.events, key=e.user_id.encode(),
                                    value=self.codec.encode(e))
        future.add_errback(self._failed)

    def _failed(self, _exc: BaseException) -> None:
        self.failed += 1

    def teardown(self) -> None:
        producer = getattr(self, "producer", None)
        if producer is not None:
            producer.flush(timeout=10)
            producer.close()


class _Requests(_Load):
    """/recommend and /feedback, alternating, on one keep-alive connection."""

    def __init__(self, port: int, item_ids: list[str], rate: float,
                 stop: threading.Event) -> None:
        super().__init__("soak-requests", rate, stop)
        self.port, self.item_ids = port, item_ids
        self.rng = np.random.default_rng(0)
        self.latency_s: dict[str, list[float]] = {"recommend": [], "feedback": []}
        self.last: tuple[str, str, str] | None = None  # user, request id, item
        self.conn: http.client.HTTPConnection | None = None

    def _post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        t0 = time.perf_counter()
        try:
            self.conn.request("POST", path, json.dumps(body).encode(),
                              {"Content-Type": "application/json"})
            r = self.conn.getresponse()
            data = r.read()
        except OSError:
            self.conn.close()
            self.conn = None
            return 0, b""
        self.latency_s[path[1:]].append(time.perf_counter() - t0)
        return r.status, data

    def one(self) -> None:
        if self.sent % 2 == 0 or self.last is None:
            i = int(self.rng.integers(2000))
            cands = self.rng.choice(len(self.item_ids), 100, replace=False)
            user = f"soak-u{i}"
            status, data = self._post("/recommend", {
                "user_id": user, "user": {"gender": "MF"[i % 2], "age": 18 + i % 50},
                "candidates": [self.item_ids[j] for j in cands], "k": 5})
            if status == 200:
                rec = json.loads(data)
                self.last = (user, rec["request_id"], rec["items"][0])
            else:
                self.failed += 1
        else:
            user, request_id, item = self.last
            status, _ = self._post("/feedback", {"type": "click", "user_id": user,
                                                 "request_id": request_id, "item_id": item})
            if status != 202:
                self.failed += 1

    def teardown(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _wait(what: str, ready, children: list[_Child], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        for c in children:
            c.check()
        if time.monotonic() > deadline:
            raise SoakFailure(f"{what} not ready after {timeout_s:.0f} s")
        time.sleep(0.5)


def _server_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return bool(json.loads(r.read()).get("ready"))
    except OSError:  # not listening yet, or 503 while not ready (HTTPError is an OSError)
        return False


def run_soak(settings: Settings, minutes: float, *, out_dir: str | os.PathLike[str] = "runs/soak",
             json_path: str | os.PathLike[str] | None = None, event_rate: float = 400.0,
             request_rate: float = 40.0, warmup_min: float = 5.0, interval_s: float = 5.0,
             attribution_window_s: float = ATTRIBUTION_WINDOW_S,
             dedup_capacity: int = DEDUP_CAPACITY, progress: bool = True,
             start_timeout_s: float = 600.0) -> dict[str, Any]:
    """Run the soak (see the module docstring); returns the report, also written as
    ``soak.json`` (and to ``json_path``) beside ``soak.png`` in ``out_dir``."""
    from stream import data
    from stream.kafka.broker import EmbeddedBroker, free_port
    from stream.kafka.producers import catalog_items, publish_catalog
    from stream.kafka.topics import ensure_topics

    if minutes <= 0 or not 0 <= warmup_min < minutes:
        raise ValueError(f"need minutes > 0 and 0 <= warmup_min < minutes, got {minutes}, "
                         f"{warmup_min}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def say(msg: str) -> None:
        if progress:
            print(f"[soak {time.monotonic() - started:7.1f}s] {msg}", flush=True)

    data.fetch(settings.data.cache_dir, ("ml100k",))
    ml = data.load_movielens(settings.data.cache_dir)
    items = catalog_items(ml)
    stop = threading.Event()
    children: list[_Child] = []
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(log_path=out / "broker.log"))
        metrics_port, serve_port = free_port(), free_port()
        tag = f"soak{os.getpid()}x{int(time.time()) % 10**6}"
        settings = settings.replace(
            kafka={"bootstrap": broker.bootstrap, "group_id": f"{tag}-workers"},
            topics={"prefix": tag},
            events={"attribution_window_s": attribution_window_s,
                    "dedup_capacity": dedup_capacity},
            worker={"checkpoint_path": str(out / "checkpoint" / "checkpoint.npz"),
                    "metrics_port": metrics_port, "metrics_host": "127.0.0.1"})
        ensure_topics(settings)
        publish_catalog(settings, items)
        env = child_env(settings)

        def kill_children() -> None:  # on failure only; the clean path stops them first
            stop.set()
            for c in reversed(children):
                c.stop(10)

        stack.callback(kill_children)
        children.append(_Child("worker", ["worker"], env, out / "worker.log"))
        say(f"broker {broker.bootstrap} (pid {broker.pid}); worker pid {children[0].proc.pid}")
        _wait("worker", lambda: (_scrape(metrics_port) or {}).get(
            "fairstream_policy_published_total", 0) >= 1, children, start_timeout_s)
        children.append(_Child("server", ["serve", "--host", "127.0.0.1", "--port",
                                          str(serve_port)], env, out / "server.log"))
        _wait("server", lambda: _server_ready(serve_port), children, start_timeout_s)
        worker, server = children
        fetch = [p for p in child_pids(worker.proc.pid) if "stream.kafka.fetch" in cmdline(p)]
        if len(fetch) != 1:
            raise SoakFailure(f"expected one fetch process under the worker, found {fetch}")
        pids = {"worker": worker.proc.pid, "fetch": fetch[0], "server": server.proc.pid,
                "broker": broker.pid, "driver": os.getpid()}
        say(f"server ready on :{serve_port}; load: {event_rate:g} events/s, "
            f"{request_rate:g} requests/s for {minutes:g} min; pids {pids}")

        loads = [_Replay(settings, ml, event_rate, stop),
                 _Requests(serve_port, [it.item_id for it in items], request_rate, stop)]
        samples: list[dict[str, Any]] = []
        host = CpuWindow().begin()
        t0 = time.monotonic()
        for load in loads:
            load.start()
        next_say = 0.0
        while True:
            t = time.monotonic() - t0
            samples.append(_sample(t, pids, metrics_port, loads))
            for c in children:
                c.check()
            for name, pid in pids.items():
                if samples[-1]["procs"][name] is None:
                    raise SoakFailure(f"{name} (pid {pid}) is gone at minute {t / 60:.1f}")
            for load in loads:
                if load.error is not None:
                    raise SoakFailure(f"{load.name} failed: {load.error!r}") from load.error
            if t >= next_say or t >= minutes * 60:
                say(_progress_line(samples, minutes))
                next_say = t + max(interval_s, min(30.0, minutes * 6))
            if t >= minutes * 60:
                break
            next_t = min(len(samples) * interval_s, minutes * 60)
            time.sleep(max(0.0, t0 + next_t - time.monotonic()))
        stop.set()
        for load in loads:
            load.join(30)
        host.finish()
        say("stopping: SIGTERM to the server, then the worker")
        exit_codes = {"server": server.stop(60), "worker": worker.stop(180)}
        children.clear()
        leftover = {n: pids[n] for n in ("worker", "fetch", "server") if alive(pids[n])}
        if exit_codes != {"server": 0, "worker": 0} or leftover:
            raise SoakFailure(f"unclean stop: exit codes {exit_codes}, still running {leftover}; "
                              f"see {out}/worker.log and server.log")
        final = worker.log.read_text().strip().splitlines()

    report = {
        "minutes": minutes, "warmup_min": warmup_min, "interval_s": interval_s,
        "event_rate": event_rate, "request_rate": request_rate,
        "attribution_window_s": attribution_window_s, "dedup_capacity": dedup_capacity,
        "pids": pids,
        "summary": summarize(samples, warmup_min * 60),
        "totals": _totals(loads, samples),
        "exit_codes": exit_codes, "worker_report": _last_json(final),
        "host": {"cpus": os.cpu_count(), "cpu_shares": host.shares(),
                 "load1_mean": _mean([s["load1"] for s in samples])},
        "samples": samples,
    }
    report["targets"] = _targets(report)
    text = json.dumps(report, indent=2) + "\n"
    (out / "soak.json").write_text(text)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text)
    plot(samples, warmup_min, out / "soak.png")
    say(f"wrote {out / 'soak.json'} and {out / 'soak.png'}")
    return report


def _sample(t: float, pids: dict[str, int], metrics_port: int, loads: list[_Load]
            ) -> dict[str, Any]:
    m = _scrape(metrics_port) or {}
    procs = {name: proc_sample(pid) for name, pid in pids.items()}
    return {"t_s": t, "load1": load_average(),
            "lag": m.get("fairstream_consumer_lag_messages"),
            "consumed": m.get("fairstream_events_consumed_total"),
            "rows_learned": m.get("fairstream_bandit_updates_total"),
            "produced": loads[0].sent, "requests": loads[1].sent,
            "failed": loads[0].failed + loads[1].failed,
            "procs": {n: s.to_dict() if s else None for n, s in procs.items()}}


def _mean(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return float(np.mean(v)) if v else None


def _window_median(samples: list[dict[str, Any]], lo: float, hi: float, get) -> float:
    v = [get(s) for s in samples if lo <= s["t_s"] <= hi]
    return float(np.median(v)) if v else float("nan")


def summarize(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Per process after ``warmup_s``: slopes per minute of RSS (MB), fds and threads, CPU
    %, RSS growth % (median over the first vs the last window of ``min(60 s, span / 4)``);
    the same slope and level figures for the consumer lag."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    if len(after) < 2:
        raise ValueError(f"{len(after)} samples after warm-up; need at least 2")
    t = [s["t_s"] for s in after]
    span = t[-1] - t[0]
    w = min(60.0, span / 4)
    out: dict[str, Any] = {"after_warmup_s": span, "samples": len(after), "window_s": w}
    for name in after[0]["procs"]:
        def get(s, key, name=name):
            return s["procs"][name][key]
        rss0 = _window_median(after, t[0], t[0] + w, lambda s, g=get: g(s, "rss_bytes"))
        rss1 = _window_median(after, t[-1] - w, t[-1], lambda s, g=get: g(s, "rss_bytes"))
        cpu = (get(after[-1], "cpu_s") - get(after[0], "cpu_s")) / span if span > 0 else 0.0
        out[name] = {
            "rss_mb_start": rss0 / 2**20, "rss_mb_end": rss1 / 2**20,
            "rss_growth_pct": 100.0 * (rss1 - rss0) / rss0,
            "rss_mb_per_min": slope_per_minute(t, [get(s, "rss_bytes") / 2**20 for s in after]),
            "fds_per_min": slope_per_minute(t, [get(s, "fds") for s in after]),
            "threads_per_min": slope_per_minute(t, [get(s, "threads") for s in after]),
            "fds_range": [min(get(s, "fds") for s in after), max(get(s, "fds") for s in after)],
            "threads_range": [min(get(s, "threads") for s in after),
                              max(get(s, "threads") for s in after)],
            "cpu_pct": 100.0 * cpu,
        }
    lt = [(s["t_s"], s["lag"]) for s in after if s["lag"] is not None]
    lag = np.array([v for _, v in lt], dtype=np.float64)
    out["lag"] = {"per_min": slope_per_minute([a for a, _ in lt], lag) if len(lt) > 1
                  else float("nan"),
                  "mean": float(lag.mean()) if len(lag) else None,
                  "p50": float(np.median(lag)) if len(lag) else None,
                  "max": float(lag.max()) if len(lag) else None}
    return out


def _totals(loads: list[_Load], samples: list[dict[str, Any]]) -> dict[str, Any]:
    replay, requests = loads
    lat = {k: np.array(v) for k, v in requests.latency_s.items()}
    return {"events_produced": replay.sent, "replay_laps": replay.lap,
            "produce_errors": replay.failed, "requests": requests.sent,
            "requests_failed": requests.failed,
            "events_consumed": samples[-1]["consumed"],
            "rows_learned": samples[-1]["rows_learned"],
            **{f"{k}_p50_ms": float(1e3 * np.median(v)) if len(v) else None
               for k, v in lat.items()},
            **{f"{k}_p99_ms": float(1e3 * np.percentile(v, 99)) if len(v) else None
               for k, v in lat.items()}}


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    """RSS growth < 5 % for the worker, its fetch process and the server; lag flat: over the
    span after warm-up its fitted change is under one second of produced events."""
    s = report["summary"]
    growth = {n: s[n]["rss_growth_pct"] for n in JUDGED}
    lag_change = abs(s["lag"]["per_min"]) * s["after_warmup_s"] / 60
    return {"rss_growth_pct": growth,
            "rss_growth_met": all(g < RSS_GROWTH_TARGET_PCT for g in growth.values()),
            "lag_fitted_change": lag_change,
            "lag_flat": bool(lag_change < report["event_rate"])}


def _last_json(lines: list[str]) -> dict[str, Any] | None:
    for line in reversed(lines):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                return json.loads(line)
    return None


def _progress_line(samples: list[dict[str, Any]], minutes: float) -> str:
    s = samples[-1]
    t = s["t_s"]
    prev = next((p for p in reversed(samples) if t - p["t_s"] >= 5), samples[0])
    dt = max(t - prev["t_s"], 1e-9)
    rss = " ".join(f"{n} {p['rss_bytes'] / 2**20:.0f}" for n, p in s["procs"].items())
    cpu = " ".join(f"{n} {100 * (p['cpu_s'] - prev['procs'][n]['cpu_s']) / dt:.0f}"
                   for n, p in s["procs"].items()) if t > prev["t_s"] else "-"
    lag = "?" if s["lag"] is None else f"{s['lag']:.0f}"
    consumed = "?" if s["consumed"] is None else f"{s['consumed']:,.0f}"
    return (f"{t / 60:5.1f}/{minutes:g} min: produced {s['produced']:,} events, consumed "
            f"{consumed}, lag {lag}; {s['requests']:,} requests ({s['failed']} failed); "
            f"RSS MB: {rss}; CPU %: {cpu}; load {s['load1']}")


def plot(samples: list[dict[str, Any]], warmup_min: float, path: Path) -> None:
    """RSS, fds, threads, CPU % per process and the worker's lag against minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s["t_s"] for s in samples]) / 60
    fig, axes = plt.subplots(5, 1, figsize=(8, 12), sharex=True, dpi=110)
    names = list(samples[0]["procs"])
    for name in names:
        p = [s["procs"][name] for s in samples]
        axes[0].plot(t, [x["rss_bytes"] / 2**20 for x in p], label=name)
        axes[1].plot(t, [x["fds"] for x in p], label=name)
        axes[2].plot(t, [x["threads"] for x in p], label=name)
        cpu = np.diff([x["cpu_s"] for x in p]) / np.maximum(np.diff(t * 60), 1e-9)
        axes[3].plot(t[1:], 100 * cpu, label=name, lw=0.8)
    axes[4].plot(t, [np.nan if s["lag"] is None else s["lag"] for s in samples], color="k")
    for ax, label in zip(axes, ("RSS (MB)", "open fds", "threads", "CPU (% of a core)",
                                "worker lag (messages)"), strict=True):
        ax.set_ylabel(label)
        ax.axvline(warmup_min, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].legend(ncol=len(names), fontsize=8)
    axes[0].set_title("fairstream bench soak (dashed: end of warm-up)")
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
