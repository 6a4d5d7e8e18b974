"""The pipeline bench's ceiling: a bare kafka-python consumer in a process of its own.

``python -m stream.bench.rawconsume BOOTSTRAP TOPIC PARTITIONS EXPECTED`` assigns
itself every partition (no group), reads from the beginning until ``EXPECTED`` records
have come, decodes nothing, and prints ``{"records", "elapsed_s", "rate"}`` as JSON.
The rate runs from the first poll that returns records to the last record. A process
of its own, like the worker's fetch process: the bench process's own heap (events,
data frames, the worker it hosts) would otherwise slow it through the collector.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition


def consume(bootstrap: str, topic: str, partitions: int, expected: int,
            max_records: int = 10_000, poll_timeout_ms: int = 200,
            fetch_max_wait_ms: int = 500, timeout_s: float = 120.0) -> dict[str, float]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             client_id="fairstream-bench-raw", max_poll_records=max_records,
                             fetch_max_wait_ms=fetch_max_wait_ms)
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        consumer.seek_to_beginning()
        n, t_first, deadline = 0, None, time.monotonic() + timeout_s
        while n < expected and time.monotonic() < deadline:
            t0 = time.perf_counter()
            batch = consumer.poll(timeout_ms=poll_timeout_ms, max_records=max_records)
            for records in batch.values():
                for _record in records:
                    n += 1
            if n and t_first is None:
                t_first = t0
        elapsed = time.perf_counter() - (t_first or time.perf_counter())
    finally:
        consumer.close()
    return {"records": n, "elapsed_s": elapsed, "rate": n / elapsed if elapsed > 0 else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream.bench.rawconsume")
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("partitions", type=int)
    parser.add_argument("expected", type=int)
    parser.add_argument("--max-records", type=int, default=10_000)
    parser.add_argument("--poll-timeout-ms", type=int, default=200)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=500)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    result = consume(args.bootstrap, args.topic, args.partitions, args.expected,
                     args.max_records, args.poll_timeout_ms, args.fetch_max_wait_ms,
                     args.timeout_s)
    print(json.dumps(result), flush=True)
    return 0 if result["records"] >= args.expected else 1


if __name__ == "__main__":
    sys.exit(main())
