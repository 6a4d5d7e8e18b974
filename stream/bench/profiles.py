"""``fairstream bench profiles``: where partition-owned profiles should live.

The in-memory store (:class:`learners.ProfileStore`, every user in memory) is the
baseline; beside it, :class:`learners.DiskProfileStore` over RocksDB (``rocksdict``) and
over SQLite (WAL, one table), each holding ``memory_share`` of the users in memory and
the rest on disk. For each store and user count, in a process of its own (so its memory
is its own), over 384-d float32 profiles:

* **restore**: every user put in chunks of 512, as a restore from ``fairstream.profiles``
  does (profiles/s), then a flush;
* **updates**: ``updates`` observes of users drawn uniformly (the worst case for a cache:
  most are on disk) and by a Zipf law (``zipf_a``; a few users are most of the traffic,
  as on a real site), each folding one catalog embedding (observes/s);
* **checkpoint flush**: the flush after the updates (seconds, and profiles written: those
  changed and still in memory, not the users);
* **gets**: ``gets`` reads of uniformly drawn users, each timed (p50 / p99 µs);
* **memory and disk**: the process's peak RSS above its RSS before the store existed,
  and the store directory's size after the last flush.

Every figure is repeated ``repeats`` times, one store after another within a repeat, so
the machine's noise lands on all of them; the results give the median and the range.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run_profiles_bench"]

STORES = ("memory", "rocksdb", "sqlite")
_CHUNK = 512
_CATALOG = 1000


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _draws(kind: str, n_users: int, k: int, zipf_a: float, rng: np.random.Generator):
    if kind == "uniform":
        return rng.integers(n_users, size=k)
    ranks = np.zeros(0, dtype=np.int64)
    while len(ranks) < k:
        more = rng.zipf(zipf_a, size=2 * k)
        ranks = np.concatenate([ranks, more[more <= n_users] - 1])
    ranks = ranks[:k]
    # a fixed random permutation of ranks to ids: hot users are not the first put
    return (ranks * 2_654_435_761 + 12_345) % n_users


def run_case(store_kind: str, n_users: int, dim: int = 384, memory_share: float = 0.1,
             updates: int = 50_000, gets: int = 20_000, zipf_a: float = 1.1,
             seed: int = 0, workdir: str | None = None) -> dict[str, Any]:
    """One store at one size, in this process (``run_profiles_bench`` starts one process
    per case). Returns the figures of one repeat."""
    from learners import DiskProfileStore, ProfileStore

    rng = np.random.default_rng(seed)
    catalog = rng.normal(size=(_CATALOG, dim)).astype(np.float32)
    ids = [f"user-{i:08d}" for i in range(n_users)]
    rss0 = _rss_mb()
    path = Path(tempfile.mkdtemp(prefix="fs-bench-profiles-", dir=workdir))
    if store_kind == "memory":
        store = ProfileStore(emb_dim=dim, decay=0.9, capacity=n_users)
    else:
        store = DiskProfileStore(path / "store", emb_dim=dim, decay=0.9,
                                 capacity=max(1, int(n_users * memory_share)),
                                 backend=store_kind, fresh=True)
    out: dict[str, Any] = {"store": store_kind, "users": n_users,
                           "in_memory": n_users if store_kind == "memory"
                           else store.capacity}
    flush = store.flush

    t0 = time.perf_counter()
    for lo in range(0, n_users, _CHUNK):
        hi = min(n_users, lo + _CHUNK)
        store.put(ids[lo:hi], rng.normal(size=(hi - lo, dim)).astype(np.float32),
                  np.ones(hi - lo), np.zeros(hi - lo))
    t1 = time.perf_counter()
    flush()
    t2 = time.perf_counter()
    out["restore_profiles_per_s"] = n_users / (t1 - t0)
    out["restore_flush_s"] = t2 - t1

    for kind in ("uniform", "zipf"):
        who = _draws(kind, n_users, updates, zipf_a, rng)
        rows = rng.integers(_CATALOG, size=len(who))
        t0 = time.perf_counter()
        for i, r in zip(who.tolist(), rows.tolist(), strict=True):
            store.observe(ids[i], catalog[r], 1.0, now=1.0)
        out[f"updates_{kind}_per_s"] = len(who) / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    written = flush()
    out["checkpoint_flush_s"] = time.perf_counter() - t0
    out["checkpoint_flush_profiles"] = int(written)

    lat = np.empty(gets)
    for j, i in enumerate(rng.integers(n_users, size=gets).tolist()):
        t0 = time.perf_counter_ns()
        store.get(ids[i])
        lat[j] = time.perf_counter_ns() - t0
    out["get_us_p50"] = float(np.percentile(lat, 50)) / 1e3
    out["get_us_p99"] = float(np.percentile(lat, 99)) / 1e3

    out["rss_mb"] = _peak_mb() - rss0
    flush(durable=True)  # everything in the files (RocksDB's memtable too) for their size
    out["disk_mb"] = _dir_mb(path)
    assert len(store) == n_users, (len(store), n_users)
    store.close()
    shutil.rmtree(path, ignore_errors=True)
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool) \
                and key not in ("users", "in_memory"):
            values = [r[key] for r in runs]
            out[key] = {"median": statistics.median(values), "min": min(values),
                        "max": max(values)}
        else:
            out[key] = value
    return out


def run_profiles_bench(users: Sequence[int] = (100_000, 1_000_000), repeats: int = 3,
                       stores: Sequence[str] = STORES, memory_share: float = 0.1,
                       updates: int = 50_000, gets: int = 20_000, dim: int = 384,
                       json_path: str | os.PathLike[str] | None = None,
                       workdir: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Every store at every user count, ``repeats`` times, each case in a process of its
    own; figures as median and range, and each store's median over the memory store's."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {s: {n: [] for n in users}
                                                        for s in stores}
    load = {"start": list(os.getloadavg())}
    for rep in range(repeats):
        for n in users:
            for s in stores:
                args = json.dumps({"store_kind": s, "n_users": n, "dim": dim,
                                   "memory_share": memory_share, "updates": updates,
                                   "gets": gets, "seed": rep, "workdir": workdir})
                done = subprocess.run([sys.executable, "-m", "stream.bench.profiles", args],
                                      capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"bench case {s} at {n} users failed:\n{done.stderr}")
                runs[s][n].append(json.loads(done.stdout.strip().splitlines()[-1]))
                if progress:
                    r = runs[s][n][-1]
                    print(f"repeat {rep + 1}/{repeats} {s:8s} {n:>9,} users: restore "
                          f"{r['restore_profiles_per_s']:>9,.0f}/s, updates uniform "
                          f"{r['updates_uniform_per_s']:>8,.0f}/s zipf "
                          f"{r['updates_zipf_per_s']:>8,.0f}/s, get p50/p99 "
                          f"{r['get_us_p50']:.1f}/{r['get_us_p99']:.1f} µs, flush "
                          f"{r['checkpoint_flush_s']:.3f} s, RSS {r['rss_mb']:,.0f} MB, "
                          f"disk {r['disk_mb']:,.0f} MB", file=sys.stderr, flush=True)
    load["end"] = list(os.getloadavg())
    result: dict[str, Any] = {"load_average": load, "repeats": repeats, "dim": dim,
                              "memory_share": memory_share, "updates": updates,
                              "gets": gets, "cpus": os.cpu_count(), "by_users": {}}
    for n in users:
        row = {s: _summary(runs[s][n]) for s in stores}
        if "memory" in row:
            base = row["memory"]
            for s in stores:
                if s == "memory":
                    continue
                row[s]["vs_memory"] = {
                    k: round(row[s][k]["median"] / base[k]["median"], 3)
                    for k in ("restore_profiles_per_s", "updates_uniform_per_s",
                              "updates_zipf_per_s", "get_us_p50", "get_us_p99", "rss_mb")
                    if base[k]["median"]}
        result["by_users"][str(n)] = row
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result


def table(result: dict[str, Any]) -> str:
    """The figures as a text table: each store beside the memory store, median [range]."""
    keys = [("restore_profiles_per_s", "restore profiles/s", "{:,.0f}"),
            ("updates_uniform_per_s", "updates/s, uniform users", "{:,.0f}"),
            ("updates_zipf_per_s", "updates/s, Zipf users", "{:,.0f}"),
            ("get_us_p50", "get p50 µs", "{:.1f}"), ("get_us_p99", "get p99 µs", "{:.1f}"),
            ("checkpoint_flush_s", "checkpoint flush s", "{:.3f}"),
            ("checkpoint_flush_profiles", "profiles flushed", "{:,.0f}"),
            ("rss_mb", "peak RSS MB", "{:,.0f}"), ("disk_mb", "disk MB", "{:,.0f}")]
    lines = []
    for n, row in result["by_users"].items():
        stores = list(row)
        held = ", ".join(f"{s}: {row[s]['in_memory']:,} in memory" for s in stores)
        lines.append(f"{int(n):,} users ({held})")
        lines.append("  " + " | ".join([f"{'':26s}", *(f"{s:>26s}" for s in stores)]))
        for key, name, fmt in keys:
            cells = []
            for s in stores:
                v = row[s][key]
                cells.append(f"{fmt.format(v['median'])} [{fmt.format(v['min'])}–"
                             f"{fmt.format(v['max'])}]".rjust(26))
            lines.append("  " + " | ".join([f"{name:26s}", *cells]))
    la = result["load_average"]
    lines.append(f"load average (1 min) {la['start'][0]:.2f} → {la['end'][0]:.2f}; "
                 f"{result['repeats']} repeats")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(run_case(**json.loads(sys.argv[1]))))
