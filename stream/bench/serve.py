"""``fairstream bench serve``: /recommend throughput and latency, measured from another process.

A real server (this process: uvicorn thread + policy/catalog/feedback
followers + impression logging to Kafka) serves MovieLens-100K's catalog
embedded by MiniLM and a signed LinUCB policy at ``features.dim``; a second
process (:mod:`stream.bench.loadgen`) drives ``POST /recommend`` on loopback
with ``n_candidates`` random candidates per request: first at saturation
(``rps_max``), then open loop at ``rate`` req/s (``p50_ms_at_200rps``,
``p99_ms_at_200rps``, named for the default rate). Runs against
``bootstrap`` when given, else an embedded broker it starts and stops.

With ``experiment`` (the default) the same run then measures the cost of an online
experiment's split: further paced rounds at ``rate`` alternate (three pairs) between no experiment
and a two-arm one (control and an arm at another ``alpha``: a keyed hash, a look-up
and a second policy view per request), off, on, off, on, off, on; ``experiment`` in the result
holds each round's p50/p99 and ``p99_overhead_ms`` (mean p99 on minus mean p99 off),
and ``in_process``: ``Recommender.recommend`` timed with and without the split in
alternation, call by call, in this process (the split's own cost, robust to a loaded
host, where the HTTP rounds' p99 measures the host as much as the server).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from typing import Any

import numpy as np

from learners import Encoder
from stream import data
from stream.bench.hoststats import CpuWindow
from stream.core.bundle import dump_bundle
from stream.core.catalog import Catalog
from stream.core.state import LearningState
from stream.events import CatalogItem
from stream.kafka.producers import catalog_items, make_producer, publish_catalog
from stream.kafka.topics import ensure_topics
from stream.serve.server import ServerThread, ServeRuntime
from stream.settings import ServeSettings, Settings


def published_catalog(settings: Settings, encoder: Encoder | None,
                      n_items: int | None) -> tuple[Encoder, list[CatalogItem]]:
    """The encoder (``encoder``, or the settings' one) and the first ``n_items`` MovieLens
    items (all by default), published on the settings' topics (created first)."""
    encoder = encoder or Encoder(cache_dir=settings.embedding_cache_dir,
                                 device=settings.model.device,
                                 batch_size=settings.model.batch_size)
    data.fetch(settings.data.cache_dir, ("ml100k",))
    items = catalog_items(data.load_movielens(settings.data.cache_dir))[:n_items]
    ensure_topics(settings)
    publish_catalog(settings, items)
    return encoder, items


def run_serve_bench(settings: Settings | None = None, *, bootstrap: str | None = None,
                    requests: int = 20_000, duration_s: float = 10.0, rate: float = 200.0,
                    n_candidates: int = 100, k: int = 5, connections: int = 4,
                    warmup: int = 500, n_items: int | None = None,
                    encoder: Encoder | None = None, experiment: bool = True,
                    progress: bool = True) -> dict[str, Any]:
    """Measure the server; returns ``rps_max``, ``p50_ms_at_200rps``, ``p99_ms_at_200rps``
    (and details). ``requests``/``duration_s`` bound each phase (whichever comes first);
    ``n_items`` caps the catalog (default: all 1,682 MovieLens items)."""
    settings = settings or Settings()
    run = uuid.uuid4().hex[:8]
    settings = settings.replace(topics={"prefix": f"bench-{run}"},
                                kafka={"group_id": f"bench-{run}"})

    def say(msg: str) -> None:
        if progress:
            print(f"bench serve: {msg}", file=sys.stderr, flush=True)

    with ExitStack() as stack:
        if bootstrap is None:
            from stream.kafka.broker import EmbeddedBroker

            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
        settings = settings.replace(kafka={"bootstrap": bootstrap})
        encoder, items = published_catalog(settings, encoder, n_items)
        say(f"embedding {len(items)} items")
        catalog = Catalog(encoder.dim)
        catalog.add(items, encoder)
        state = LearningState.fresh(settings, catalog)
        _warm_policy(state, np.random.default_rng(0))
        producer = make_producer(settings)
        producer.send(settings.topics.policies, key=settings.kafka.group_id.encode(),
                      value=dump_bundle(state.policy, state.fmap,
                                        key=settings.policy.signing_key.encode(), version=1))
        producer.flush()
        producer.close()

        serve = ServeSettings(max_candidates=max(1000, n_candidates))
        runtime = ServeRuntime(settings, serve, encoder=encoder).start()
        stack.callback(runtime.close)
        server = stack.enter_context(ServerThread(runtime.app))
        runtime.wait_ready(120)
        say(f"server ready at {server.url}; policy v1, {runtime.recommender.catalog_size} items")

        rng = np.random.default_rng(1)
        ids = catalog.ids
        bodies = [json.dumps({"user_id": f"bench-u{i}",
                              "user": {"gender": "MF"[i % 2], "age": int(18 + i % 50)},
                              "candidates": [ids[j] for j in rng.choice(len(ids), n_candidates,
                                                                        replace=False)],
                              "k": k}) for i in range(256)]
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        spec = {"host": server.host, "port": server.port, "bodies": os.path.join(tmp, "b.json"),
                "connections": connections, "max_requests": requests, "max_seconds": duration_s,
                "rate": rate, "paced_requests": requests, "paced_seconds": duration_s,
                "pool": 16, "warmup": warmup, "progress": progress}
        with open(spec["bodies"], "w") as f:
            json.dump(bodies, f)
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        t0 = time.monotonic()

        def loadgen(path: str) -> dict[str, Any]:
            proc = subprocess.run([sys.executable, "-m", "stream.bench.loadgen", path],
                                  capture_output=True, text=True,
                                  timeout=120 + 3 * duration_s + 2 * requests / rate)
            if progress and proc.stderr:
                sys.stderr.write(proc.stderr)
            if proc.returncode != 0:
                raise RuntimeError(f"load generator failed ({proc.returncode}): "
                                   f"{proc.stderr[-2000:]}")
            return json.loads(proc.stdout.strip().splitlines()[-1])

        with CpuWindow() as host:
            load = loadgen(spec_path)
        elapsed = time.monotonic() - t0
        split = None
        if experiment:
            split = _experiment_rounds(runtime, spec, tmp, loadgen, say)
        m = runtime.metrics.registry
        result = {
            "rps_max": load["max"]["rps"],
            "p50_ms_at_200rps": load["paced"]["p50_ms"],
            "p99_ms_at_200rps": load["paced"]["p99_ms"],
            "rate": rate,
            "paced": load["paced"],
            "max": load["max"],
            "n_candidates": n_candidates,
            "k": k,
            "dim": settings.features.dim,
            "catalog_items": runtime.recommender.catalog_size,
            "connections": connections,
            "cpus": os.cpu_count(),
            "impressions_dropped": m.get_sample_value(
                "fairstream_serve_impressions_dropped_total") or 0.0,
            "load_seconds": elapsed,
            # CPU share stolen by the hypervisor while loading: a tail percentile taken
            # while it is high measures the host more than the server.
            "host_cpu": host.shares(),
            "load_average": os.getloadavg(),
        }
        if split is not None:
            result["experiment"] = split
        runtime.close()  # flush impressions before counting them
        result["impressions_logged"] = m.get_sample_value(
            "fairstream_serve_impressions_logged_total") or 0.0
        steal = [load[phase]["host_cpu"]["steal"] for phase in ("max", "paced")]
        say(f"{result['rps_max']:.0f} req/s max; at {rate:g} req/s p50 "
            f"{result['p50_ms_at_200rps']:.2f} ms, p99 {result['p99_ms_at_200rps']:.2f} ms"
            + ("; host CPU stolen {:.1f} % / {:.1f} % (max / paced phase)".format(
                *(100 * x for x in steal)) if None not in steal else ""))
        return result


def _experiment_rounds(runtime: ServeRuntime, spec: dict[str, Any], tmp: str, loadgen: Any,
                       say: Any) -> dict[str, Any]:
    """Paced rounds without and with a two-arm experiment, alternating (see module doc)."""
    from stream.experiments import Arm, Experiment

    exp = Experiment(name="bench", arms=[Arm(name="control", share=0.5),
                                         Arm(name="alt", share=0.5, alpha=0.5)])
    path = os.path.join(tmp, "paced.json")
    with open(path, "w") as f:
        json.dump({**spec, "paced_only": True, "progress": False}, f)
    rounds = []
    for on in (False, True, False, True, False, True):
        runtime.recommender.set_experiment(exp if on else None)
        paced = loadgen(path)["paced"]
        rounds.append({"experiment": on, "p50_ms": paced["p50_ms"], "p99_ms": paced["p99_ms"],
                       "load_average_1m": os.getloadavg()[0]})
        say(f"experiment {'on ' if on else 'off'}: p50 {paced['p50_ms']:.2f} ms, "
            f"p99 {paced['p99_ms']:.2f} ms")
    runtime.recommender.set_experiment(None)
    off = [r["p99_ms"] for r in rounds if not r["experiment"]]
    on_ = [r["p99_ms"] for r in rounds if r["experiment"]]
    return {"rounds": rounds, "p99_ms_off": sum(off) / len(off),
            "p99_ms_on": sum(on_) / len(on_),
            "p99_overhead_ms": sum(on_) / len(on_) - sum(off) / len(off),
            "in_process": _paired_calls(runtime, exp, spec)}


def _paired_calls(runtime: ServeRuntime, exp: Any, spec: dict[str, Any],
                  pairs: int = 3000) -> dict[str, Any]:
    """``Recommender.recommend`` timed in this process, with and without the split in
    alternation (the same request both ways, the order flipped every pair): the split's
    own cost, which a loaded host cannot hide in one phase and not the other."""
    rec = runtime.recommender
    with open(spec["bodies"]) as f:
        bodies = [json.loads(b) for b in json.load(f)]
    split = rec.set_experiment(exp)
    rec.split = None
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(pairs):
        body = bodies[i % len(bodies)]
        for on in ((False, True) if i % 2 else (True, False)):
            rec.split = split if on else None
            t0 = time.perf_counter()
            rec.recommend(body["user_id"], body["user"], body["candidates"], body["k"])
            times[on].append(time.perf_counter() - t0)
    rec.split = None
    out: dict[str, Any] = {"pairs": pairs}
    for on, name in ((False, "off"), (True, "on")):
        t = np.array(times[on]) * 1e3
        out[f"p50_ms_{name}"] = float(np.percentile(t, 50))
        out[f"p99_ms_{name}"] = float(np.percentile(t, 99))
    out["p50_overhead_ms"] = out["p50_ms_on"] - out["p50_ms_off"]
    out["p99_overhead_ms"] = out["p99_ms_on"] - out["p99_ms_off"]
    return out


def _warm_policy(state: LearningState, rng: np.random.Generator, rows: int = 2000) -> None:
    """Give the policy non-trivial statistics, as a published one would have."""
    n = len(state.catalog)
    items = rng.integers(0, n, rows)
    X = state.fmap.transform(None, np.zeros(state.catalog.embeddings.shape[1]),
                             {"gender": "F", "age": 30},
                             adapted_items=state.adapted_items(items))
    ids = [state.catalog.ids[i] for i in items] if state.policy.uses_item_ids else None
    state.policy.update(X, (rng.random(rows) < 0.2).astype(np.float64), item_ids=ids)
