"""`fairstream bench profiles` reports every store beside the memory store, on a small run."""

from __future__ import annotations

from stream.bench.profiles import run_profiles_bench, table


def test_bench_profiles_reports_each_store_beside_memory(tmp_path):
    out = run_profiles_bench(users=(3000,), repeats=1, updates=600, gets=200, dim=16,
                             json_path=tmp_path / "p.json", workdir=str(tmp_path),
                             progress=False)
    row = out["by_users"]["3000"]
    assert set(row) == {"memory", "rocksdb", "sqlite"}
    assert row["memory"]["in_memory"] == 3000 and row["rocksdb"]["in_memory"] == 300
    for store, figures in row.items():
        for key in ("restore_profiles_per_s", "updates_uniform_per_s", "updates_zipf_per_s",
                    "get_us_p50", "get_us_p99", "rss_mb"):
            lo, mid, hi = (figures[key][k] for k in ("min", "median", "max"))
            assert 0 < lo <= mid <= hi, (store, key)
        if store != "memory":
            # the flush writes what changed and is still in memory, never every user
            assert 0 < figures["checkpoint_flush_profiles"]["max"] <= 300
            assert figures["disk_mb"]["min"] > 3000 * 16 * 4 / 2**20
            assert set(figures["vs_memory"]) >= {"updates_uniform_per_s", "get_us_p50"}
    assert (tmp_path / "p.json").exists() and "rocksdb" in table(out)
    assert not list(tmp_path.glob("fs-bench-profiles-*"))  # the stores' files are removed
