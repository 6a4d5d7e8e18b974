"""Evaluation: fairstream beside the systems users would otherwise pick, on the same data.

- :func:`run_eval_sim` — closed-loop MovieLens replay: fairstream's policies vs Vowpal
  Wabbit, river, most-popular and random; reward, regret, fairness, trade-off sweep.
- :func:`run_eval_ope` — off-policy estimates (IPW, SNIPW, DR) on the Open Bandit sample.
- :func:`run_pipeline_bench` — events/s learned end to end vs the broker's raw rate.

Each writes results.json, a markdown report and PNG plots into a run directory.
"""

__all__ = ["run_eval_ope", "run_eval_sim", "run_pipeline_bench"]

_HOMES = {"run_eval_sim": "stream.evaluate.sim", "run_eval_ope": "stream.evaluate.ope",
          "run_pipeline_bench": "stream.evaluate.pipeline"}


def __getattr__(name: str):
    # Peers (Vowpal Wabbit, river) and plotting load only when an evaluation runs.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(name)
