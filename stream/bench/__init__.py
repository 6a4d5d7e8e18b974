"""Benchmarks and load generators, kept apart from what they measure.

- :func:`run_bandits_bench` — single and batched updates and 100-candidate scoring per
  dimension, beside a naive numpy baseline; the hybrid policy's memory and scoring.
- :func:`run_learners_bench` — embedding, fine-tune and consumer-stall figures.
- :func:`run_serve_bench` — ``/recommend`` throughput and latency from a second process
  (:mod:`stream.bench.loadgen`).
- :func:`run_pipeline_bench` — events/s one worker learns end to end vs the raw consume
  rate of a bare consumer (:mod:`stream.bench.rawconsume`).
- :func:`run_soak` — worker and server processes under steady load for minutes: RSS, fds,
  threads, CPU and lag sampled per process (:mod:`stream.bench.procstats`), slopes after
  warm-up.
"""

from stream.bench.bandits import run_bandits_bench
from stream.bench.learners import run_learners_bench
from stream.bench.pipeline import run_pipeline_bench
from stream.bench.serve import run_serve_bench
from stream.bench.soak import run_soak

__all__ = ["run_bandits_bench", "run_learners_bench", "run_pipeline_bench", "run_serve_bench",
           "run_soak"]
