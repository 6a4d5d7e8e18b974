"""Evaluation: fairstream beside the systems users would otherwise pick, on the same data.

- :func:`run_eval_sim` — closed-loop MovieLens replay: fairstream's policies vs Vowpal
  Wabbit, river, most-popular and random; reward, regret, fairness, trade-off sweep.
- :func:`run_eval_ope` — off-policy estimates (IPW, SNIPW, DR) on the Open Bandit sample.

Each writes results.json, a markdown report and PNG plots into a run directory. Peers
(Vowpal Wabbit, river) and plotting load only when an evaluation runs.
"""

from stream.evaluate.ope import run_eval_ope
from stream.evaluate.sim import run_eval_sim

__all__ = ["run_eval_ope", "run_eval_sim"]
