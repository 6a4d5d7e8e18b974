"""fairstream's stream layer: everything that touches Kafka, HTTP or the process lifecycle.

Shared modules: :mod:`~stream.settings`, :mod:`~stream.events` (the topics' schema and
codec), :mod:`~stream.exceptions`, :mod:`~stream.metrics`, :mod:`~stream.data`,
:mod:`~stream.cli`. Packages, one concern each:

- :mod:`stream.core` — catalog, reward join, learning state, checkpoints, bundles
  (no Kafka, no HTTP);
- :mod:`stream.kafka` — topics, producers, the embedded broker, the catalog feed and
  the worker's fetch process;
- :mod:`stream.worker` — the learning worker's loop and its rooms;
- :mod:`stream.serve` — the HTTP API following published policies;
- :mod:`stream.sim` — the closed-loop MovieLens simulator and the demo;
- :mod:`stream.evaluate` — fairstream beside its peers, off-policy evaluation;
- :mod:`stream.bench` — every benchmark and load generator.
"""
