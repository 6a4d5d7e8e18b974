"""Cold-start bookkeeping: how a policy treats items that appear mid-stream.

For every new item (held back until the stream's midpoint, see
:mod:`stream.evaluate.simulation`) and one policy, the log counts the item's
impressions in that policy's slates, the rewards of its first ``first_n``
impressions, and the impression at which it was first clicked. The summary:

* ``first_n_reward`` — pooled mean reward over the new items' first ``first_n``
  impressions: Σ_items Σ_{m ≤ min(n_i, first_n)} r_im / Σ_items min(n_i, first_n);
* ``first_click_mean`` — mean 1-based impression index of the first click over
  the new items that got one (a lower-biased figure on its own: items never
  clicked are censored, so their counts are reported beside it);
* ``clicked`` / ``censored`` / ``unshown`` — new items clicked at least once,
  shown but never clicked (right-censored at ``censored_impressions_mean``), and
  never shown by this policy at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ColdStartLog"]


class ColdStartLog:
    """Per-policy impressions of the new items (rows of the catalog where ``new`` is True).

    >>> import numpy as np
    >>> log = ColdStartLog(np.array([False, True, True]), first_n=2)
    >>> log.observe(np.array([0, 1]), np.array([1.0, 0.0]))
    >>> log.observe(np.array([1, 2]), np.array([1.0, 0.0]))
    >>> s = log.summary()
    >>> s["first_n_reward"], s["first_click_mean"], s["clicked"], s["censored"]
    (0.3333333333333333, 2.0, 1, 1)
    """

    def __init__(self, new_items: np.ndarray, first_n: int = 20) -> None:
        if first_n < 1:
            raise ValueError(f"first_n must be ≥ 1, got {first_n}")
        self.new = np.asarray(new_items, dtype=bool)
        self.first_n = int(first_n)
        n = self.new.shape[0]
        self.impressions = np.zeros(n, dtype=np.int64)
        self.first_rewards = np.zeros(n, dtype=np.float64)
        self.first_click = np.zeros(n, dtype=np.int64)  # 1-based impression; 0 = not yet

    def __repr__(self) -> str:
        return (f"ColdStartLog(new={int(self.new.sum())}, first_n={self.first_n}, "
                f"shown={int((self.impressions[self.new] > 0).sum())})")

    def observe(self, items: np.ndarray, rewards: np.ndarray) -> None:
        """One slate: catalog rows ``items`` (distinct) shown with 0/1 ``rewards``."""
        items = np.asarray(items, dtype=np.intp)
        rewards = np.asarray(rewards, dtype=np.float64)
        if items.shape != rewards.shape:
            raise ValueError(f"items {items.shape} and rewards {rewards.shape} differ in shape")
        is_new = self.new[items]
        if not is_new.any():
            return
        rows, r = items[is_new], rewards[is_new]
        self.impressions[rows] += 1
        count = self.impressions[rows]
        early = count <= self.first_n
        self.first_rewards[rows[early]] += r[early]
        hit = (r > 0) & (self.first_click[rows] == 0)
        self.first_click[rows[hit]] = count[hit]

    def summary(self) -> dict[str, Any]:
        """The figures of the module doc (NaN where no new item qualifies)."""
        n = self.impressions[self.new]
        shown = n > 0
        early = np.minimum(n, self.first_n)
        clicks = self.first_click[self.new]
        clicked = clicks > 0
        censored = shown & ~clicked
        return {
            "first_n": self.first_n,
            "first_n_reward": (float(self.first_rewards[self.new].sum() / early.sum())
                               if early.sum() else float("nan")),
            "first_n_impressions": int(early.sum()),
            "first_click_mean": float(clicks[clicked].mean()) if clicked.any() else float("nan"),
            "clicked": int(clicked.sum()),
            "censored": int(censored.sum()),
            "censored_impressions_mean": (float(n[censored].mean()) if censored.any()
                                          else float("nan")),
            "unshown": int((~shown).sum()),
            "new_items": int(self.new.sum()),
            "impressions": int(n.sum()),
        }
