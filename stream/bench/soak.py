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

The load runs in threads of this process (:mod:`stream.bench.soakload`); the
figures and the plot are :mod:`stream.bench.soakreport`'s. Every
``interval_s`` it samples RSS, open fds, threads and CPU seconds of the
worker, its fetch process, the server, the broker and itself (the load
driver, :mod:`stream.bench.procstats`), and the worker's consumer lag and
events consumed from its ``/metrics``. After ``warmup_min`` it fits the
least-squares slope per minute of each series, and the RSS growth from the
minute after warm-up to the last minute (medians over each, so one sample
taken during a fine-tune does not decide it). A process that dies fails the
run (:class:`SoakFailure`, with the tail of its log). At the end the server
and the worker get SIGTERM and must exit 0, and no child may be left.

Three bounded structures are sized so that they are full before the warm-up
ends, since a soak looks for growth in a steady state: the attribution
window is ``attribution_window_s`` (60 s of event time by default, not the
production 1,800 s: the reward join holds every impression of its window,
and with 1,800 s it would still be filling at the end of a 30-minute run),
and the dedup memory keeps ``dedup_capacity`` ids (100,000 by default, not
500,000: about 160 bytes an id, so the default's 80 MB would fill for 19
minutes at 440 events/s), and the server's impression-discount memory keeps
``discount_items`` items per user (10 by default, not 50: the requests come from
2,000 users, each served 5 items about every 100 s, so 50 items a user, about
14 MB, would fill for 17 minutes). Every other setting is the one given.
"""

from __future__ import annotations

import contextlib
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

import numpy as np

from stream.bench.hoststats import CpuWindow
from stream.bench.procstats import alive, child_pids, cmdline, load_average, proc_sample
from stream.bench.soakload import PacedLoad, Replay, Requests
from stream.bench.soakreport import plot, summarize, targets
from stream.core.keys import run_key
from stream.exceptions import FairstreamError
from stream.settings import Settings, settings_env

__all__ = ["SoakFailure", "run_soak", "summarize"]

ATTRIBUTION_WINDOW_S = 60.0
DEDUP_CAPACITY = 100_000
DISCOUNT_ITEMS = 10


class SoakFailure(FairstreamError):
    """A process died, a load thread failed, or a stop was not clean."""


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

    def check(self, wait_s: float = 0.0) -> None:
        """Raise if the process has exited; ``wait_s``: wait that long for its exit status
        (one that /proc already shows gone may not be reapable yet: its threads are still
        being torn down)."""
        try:
            code = self.proc.wait(wait_s) if wait_s else self.proc.poll()
        except subprocess.TimeoutExpired:
            return
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
             dedup_capacity: int = DEDUP_CAPACITY, discount_items: int = DISCOUNT_ITEMS,
             progress: bool = True,
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
        settings = run_key(settings).replace(
            kafka={"bootstrap": broker.bootstrap, "group_id": f"{tag}-workers"},
            topics={"prefix": tag},
            events={"attribution_window_s": attribution_window_s,
                    "dedup_capacity": dedup_capacity},
            serve={"impression_discount_items": discount_items},
            worker={"checkpoint_path": str(out / "checkpoint" / "checkpoint.npz"),
                    "metrics_port": metrics_port, "metrics_host": "127.0.0.1"})
        ensure_topics(settings)
        publish_catalog(settings, items)
        env = settings_env(settings)

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

        loads = [Replay(settings, ml, event_rate, stop),
                 Requests(serve_port, [it.item_id for it in items], request_rate, stop)]
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
                    for c in children:  # ours: report how it ended, not only that it did
                        if c.proc.pid == pid:
                            c.check(wait_s=10.0)
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
        "discount_items": discount_items,
        "pids": pids,
        "summary": summarize(samples, warmup_min * 60),
        "totals": _totals(loads, samples),
        "exit_codes": exit_codes, "worker_report": _last_json(final),
        "host": {"cpus": os.cpu_count(), "cpu_shares": host.shares(),
                 "load1_mean": _mean([s["load1"] for s in samples])},
        "samples": samples,
    }
    report["targets"] = targets(report)
    text = json.dumps(report, indent=2) + "\n"
    (out / "soak.json").write_text(text)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text)
    plot(samples, warmup_min, out / "soak.png")
    say(f"wrote {out / 'soak.json'} and {out / 'soak.png'}")
    return report


def _sample(t: float, pids: dict[str, int], metrics_port: int, loads: list[PacedLoad]
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


def _totals(loads: list[PacedLoad], samples: list[dict[str, Any]]) -> dict[str, Any]:
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


