"""Load generator for :func:`stream.bench.serve.run_serve_bench`, run as a second process.

asyncio streams (on uvloop when installed), HTTP/1.1 keep-alive and
pre-encoded requests, so the client costs little CPU next to the server it
measures. Two phases:

* **max**: ``connections`` closed-loop clients for ``max_requests`` requests
  or ``max_seconds`` → requests/s and latency at saturation;
* **paced**: open loop at ``rate`` requests/s (request i is due at
  ``t0 + i/rate``; latency counts from when it was due, so a slow server is
  not hidden by a client that waited for it — no coordinated omission).

``python -m stream.bench.loadgen SPEC.json`` prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from stream.bench.hoststats import CpuWindow


def _request(host: str, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def call(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status


async def _connect(host: str, port: int) -> _Conn:
    return _Conn(*await asyncio.open_connection(host, port))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _max_phase(spec: dict[str, Any], requests: list[bytes]) -> dict[str, Any]:
    n_total, seconds, n_conn = spec["max_requests"], spec["max_seconds"], spec["connections"]
    conns = [await _connect(spec["host"], spec["port"]) for _ in range(n_conn)]
    lat: list[float] = []
    errors = 0
    counter = iter(range(n_total))
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def client(conn: _Conn) -> None:
        nonlocal errors
        for i in counter:
            if time.perf_counter() > deadline:
                return
            start = time.perf_counter()
            if await conn.call(requests[i % len(requests)]) != 200:
                errors += 1
            lat.append(time.perf_counter() - start)

    await asyncio.gather(*(client(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.writer.close()
    return {"requests": len(lat), "seconds": elapsed, "rps": len(lat) / elapsed,
            "errors": errors, "p50_ms": 1e3 * _pct(lat, 0.5), "p99_ms": 1e3 * _pct(lat, 0.99)}


async def _paced_phase(spec: dict[str, Any], requests: list[bytes]) -> dict[str, Any]:
    rate = spec["rate"]
    n = max(1, min(spec["paced_requests"], int(rate * spec["paced_seconds"])))
    pool: asyncio.Queue[_Conn] = asyncio.Queue()
    for _ in range(spec["pool"]):
        pool.put_nowait(await _connect(spec["host"], spec["port"]))
    lat: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()

    async def one(i: int, due: float) -> None:
        nonlocal errors
        conn = await pool.get()
        try:
            if await conn.call(requests[i % len(requests)]) != 200:
                errors += 1
        finally:
            pool.put_nowait(conn)
        lat.append(time.perf_counter() - due)

    tasks = []
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        due = t0 + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(loop.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    achieved = n / (time.perf_counter() - t0)
    while not pool.empty():
        pool.get_nowait().writer.close()
    return {"requests": n, "rate": rate, "achieved_rps": achieved, "errors": errors,
            "p50_ms": 1e3 * _pct(lat, 0.5), "p90_ms": 1e3 * _pct(lat, 0.9),
            "p99_ms": 1e3 * _pct(lat, 0.99), "max_ms": 1e3 * max(lat)}


async def _main(spec: dict[str, Any]) -> dict[str, Any]:
    with open(spec["bodies"]) as f:
        bodies = json.load(f)
    requests = [_request(spec["host"], "/recommend", b.encode()) for b in bodies]
    warm = dict(spec, max_requests=spec["warmup"], max_seconds=30.0)
    await _max_phase(warm, requests)
    if spec.get("paced_only"):  # a further paced round of the same run (bench serve)
        with CpuWindow() as host:
            result = {"paced": await _paced_phase(spec, requests)}
        result["paced"]["host_cpu"] = host.shares()
        return result
    if spec["progress"]:
        print("loadgen: max-load phase", file=sys.stderr, flush=True)
    with CpuWindow() as host:
        result = {"max": await _max_phase(spec, requests)}
    result["max"]["host_cpu"] = host.shares()
    if spec["progress"]:
        print(f"loadgen: {result['max']['rps']:.0f} req/s; paced phase at {spec['rate']} req/s",
              file=sys.stderr, flush=True)
    with CpuWindow() as host:
        result["paced"] = await _paced_phase(spec, requests)
    result["paced"]["host_cpu"] = host.shares()
    return result


def main(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(_main(spec))
    return uvloop.run(_main(spec))


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(main(json.load(f))))
