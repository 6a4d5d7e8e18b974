"""Established bandit systems as simulation peers, fed the same arrivals and candidates.

* **Vowpal Wabbit, as its users configure it** (``vowpalwabbit.Workspace``, text
  examples, ``--cb_explore_adf``): sparse namespaces, and ``-q`` builds the
  crosses. The shared line holds ``u`` (user id), ``a`` (gender, age bucket,
  occupation) and ``h`` (ids of the last ``history_len`` items the user logged a
  rating ≥ 4 for before the arrival); each action line holds ``i`` (item id),
  ``g`` (genres, release year and decade) and ``t`` (title tokens). The options
  (exploration, ``--cb_type``, ``-q`` pairs, ``-l`` ...) come from the roster.
* **Vowpal Wabbit on the dense φ blocks** (``features="dense_phi"``, the extra
  ``vw_dense_phi*`` rows): one shared line (namespace ``U``: the adapted profile
  block of φ plus the user-attribute indicators) and one action line per
  candidate (namespace ``A``: the adapted item block of φ), ``-q UA``.

For both, a slate is ``k`` draws without replacement from VW's PMF (renormalised
after each draw); each shown item is learnt as an example over all candidates
whose label ``0:cost:p`` (``cost = −r``, ``p`` its probability at the draw) sits
on that item's line. ``--ccb_explore_adf`` (VW's own slate reduction: one PMF
per slot, without replacement) is offered as a further setting on the dense φ.
* **river** (``river.bandit``): context-free policies with one arm per item id;
  a slate is ``k`` successive ``pull``\\s over the candidates not yet chosen,
  and each shown arm is updated with its reward.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from learners.features import AGE_BUCKETS, GENDERS, age_code, block_widths
from stream.evaluate.simulation import Arrival, EvalWorld

__all__ = ["RiverAgent", "VWAgent", "VWSlateAgent", "river_policy"]


def _fmt(v: np.ndarray, prefix: str) -> str:
    return " ".join(f"{prefix}{j}:{x:.5g}" for j, x in enumerate(v.tolist()) if x != 0.0)


def _token(s: object) -> str:
    """A VW feature name: lower-case letters and digits only (no ``|``, ``:`` or spaces)."""
    return re.sub(r"[^a-z0-9]+", "", str(s).lower())


class _VWText:
    """Dense-φ text: item lines precomputed per catalog row."""

    def __init__(self, world: EvalWorld) -> None:
        ki, k, _ = block_widths(world.dim)
        self.k_profile = k
        self.fmap = world.fmap
        self.items = [f"|A {_fmt(row[:ki], 'i')}" for row in world.adapted]

    def shared(self, arr: Arrival) -> str:
        ap = self.fmap.adapt(arr.profile[None, :])[0][: self.k_profile]
        g, a = arr.codes
        attrs = (f" g{GENDERS[g]}" if g >= 0 else "") + (f" a{AGE_BUCKETS[a]}" if a >= 0 else "")
        return f"|U {_fmt(ap, 'p')}{attrs}"


class _VWSparseText:
    """Sparse, id-based text (see the module doc): item lines precomputed per catalog row."""

    def __init__(self, world: EvalWorld, history_len: int = 30) -> None:
        self.history_len = history_len
        self.item_ids = [_token(i) for i in world.item_ids]
        self.items = []
        for row, iid in enumerate(self.item_ids):
            meta = world.item_meta[row] if world.item_meta else {}
            genres = " ".join(_token(g) for g in meta.get("genres", ()))
            year = int(meta.get("year", 0))
            when = f" y{year} d{year // 10}" if year else ""
            title = " ".join(sorted({w for w in re.findall(r"[a-z0-9]+",
                                                            str(meta.get("title", "")).lower())}))
            self.items.append(f"|i {iid} |g {genres}{when} |t {title}")
        self.users = []
        for uid, attrs in zip(world.user_ids, world.user_attrs, strict=True):
            a = []
            if attrs.get("gender") is not None:
                a.append(f"g{_token(attrs['gender'])}")
            code = age_code(attrs.get("age"))
            if code >= 0:
                a.append(f"a{code}")
            if attrs.get("occupation"):
                a.append(f"o{_token(attrs['occupation'])}")
            self.users.append(f"|u {_token(uid)} |a {' '.join(a)}")

    def shared(self, arr: Arrival) -> str:
        hist = arr.history[-self.history_len:] if self.history_len else arr.history[:0]
        return f"{self.users[arr.user]} |h {' '.join(self.item_ids[i] for i in hist.tolist())}"


class VWAgent:
    """VW ``--cb_explore_adf`` with ``args`` (see the module doc).

    ``features``: ``"sparse"`` (ids, attributes, history, genres, title) or
    ``"dense_phi"`` (the φ blocks).

    >>> import numpy as np
    >>> from stream.evaluate.simulation import build_world, draw_stream, run_seed
    >>> emb = np.random.default_rng(0).normal(size=(24, 384))
    >>> au, ai = np.repeat([0, 1], 12), np.r_[np.arange(12), np.arange(12, 24)]
    >>> world = build_world([f"m{i}" for i in range(24)], emb, np.zeros(24, bool),
    ...                     ["u0", "u1"], [{"gender": "F", "age": 30}, {}], au, ai,
    ...                     (ai % 2).astype(float), dim=16,
    ...                     item_meta=[{"title": "Heat", "year": 1995, "genres": ("Crime",)}] * 24)
    >>> agent = VWAgent("vw_squarecb", world, "--squarecb -q ui -q hi")
    >>> out = run_seed(world, draw_stream(world, 0, 4), [agent], k=1, progress=False)
    >>> arr = Arrival(5, 0, np.array([3]), ["m3"], np.zeros((1, 16)), world.profiles[5],
    ...               world.user_attrs[0], (1, 2), ["head"], world.history(5))
    >>> agent.example(arr)
    ['shared |u u0 |a gf a2 |h m1 m3', '|i m3 |g crime y1995 d199 |t heat']
    >>> agent.finish()
    """

    def __init__(self, name: str, world: EvalWorld, args: str, seed: int = 0,
                 features: str = "sparse", history_len: int = 30) -> None:
        import vowpalwabbit

        if features not in ("sparse", "dense_phi"):
            raise ValueError(f"features must be 'sparse' or 'dense_phi', got {features!r}")
        self.name = name
        self.args = args
        self.features = features
        self.vw = vowpalwabbit.Workspace(f"--cb_explore_adf --quiet --random_seed {seed} "
                                         f"{args}")
        self.text = (_VWSparseText(world, history_len) if features == "sparse"
                     else _VWText(world))
        self._lines: list[str] = []
        self._probs: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"VWAgent(name={self.name!r}, args={self.args!r}, features={self.features!r})"

    def example(self, arr: Arrival) -> list[str]:
        """The multiline example of an arrival: the shared line, then one line per candidate."""
        return ["shared " + self.text.shared(arr)] + [self.text.items[i] for i in arr.cands]

    def select(self, arr: Arrival, k: int, rng: np.random.Generator) -> np.ndarray:
        self._lines = self.example(arr)
        pmf = np.asarray(self.vw.predict(self._lines), dtype=np.float64)
        pmf = np.maximum(pmf, 0.0)
        shown, probs = [], []
        left = pmf.copy()
        for _ in range(k):
            total = left.sum()
            if total > 0:
                p = left / total
            else:  # PMF exhausted (VW put all mass on fewer than k actions): uniform rest
                p = np.ones_like(left)
                p[shown] = 0.0
                p /= p.sum()
            j = min(int(np.searchsorted(np.cumsum(p), rng.random(), side="right")),
                    p.shape[0] - 1)
            while p[j] <= 0:  # float round-off landed on a zero-mass tail
                j -= 1
            shown.append(j)
            probs.append(max(float(p[j]), 1e-6))
            left[j] = 0.0
        self._probs = np.array(probs)
        return np.array(shown, dtype=np.intp)

    def learn(self, arr: Arrival, shown: np.ndarray, rewards: np.ndarray) -> None:
        assert self._probs is not None
        for j, r, p in zip(shown.tolist(), rewards.tolist(), self._probs.tolist(), strict=True):
            lines = list(self._lines)
            lines[1 + j] = f"0:{-r:g}:{p:.6g} {lines[1 + j]}"
            self.vw.learn(lines)

    def finish(self) -> None:
        self.vw.finish()


class VWSlateAgent:
    """VW ``--ccb_explore_adf``: conditional contextual bandit, one slot per position."""

    def __init__(self, name: str, world: EvalWorld, args: str, seed: int = 0) -> None:
        import vowpalwabbit

        self.name = name
        self.args = args
        self.vw = vowpalwabbit.Workspace(f"--ccb_explore_adf -q UA --quiet --random_seed {seed} "
                                         f"{args}")
        self.text = _VWText(world)
        self._lines: list[str] = []
        self._probs: list[float] = []

    def __repr__(self) -> str:
        return f"VWSlateAgent(name={self.name!r}, args={self.args!r})"

    def select(self, arr: Arrival, k: int, rng: np.random.Generator) -> np.ndarray:
        head = ["ccb shared " + self.text.shared(arr)]
        head += ["ccb action " + self.text.items[i] for i in arr.cands]
        self._lines = head
        pred = self.vw.predict(head + ["ccb slot |"] * k)
        # Slot predictions are (action, prob) lists with the chosen action first; VW
        # samples with its own seeded generator.
        shown = [int(slot[0][0]) for slot in pred]
        self._probs = [max(float(slot[0][1]), 1e-6) for slot in pred]
        return np.array(shown, dtype=np.intp)

    def learn(self, arr: Arrival, shown: np.ndarray, rewards: np.ndarray) -> None:
        slots = [f"ccb slot {j}:{-r:g}:{p:.6g} |" for j, r, p in
                 zip(shown.tolist(), rewards.tolist(), self._probs, strict=True)]
        self.vw.learn(self._lines + slots)

    def finish(self) -> None:
        self.vw.finish()


def river_policy(kind: str, seed: int):
    """A river bandit policy by short name: ``eps`` (ε = 0.1), ``ucb`` (δ = 0.1), ``ts`` (Beta)."""
    from river import bandit, proba

    if kind == "eps":
        return bandit.EpsilonGreedy(epsilon=0.1, seed=seed)
    if kind == "ucb":
        return bandit.UCB(delta=0.1, seed=seed)
    if kind == "ts":
        return bandit.ThompsonSampling(reward_obj=proba.Beta(), seed=seed)
    raise ValueError(f"unknown river policy {kind!r}")


class RiverAgent:
    """A context-free river policy, one arm per item id, k pulls without replacement."""

    def __init__(self, name: str, policy) -> None:
        self.name = name
        self.policy = policy

    def __repr__(self) -> str:
        return f"RiverAgent(name={self.name!r}, policy={self.policy!r})"

    def select(self, arr: Arrival, k: int, rng: np.random.Generator) -> np.ndarray:
        left: list[int] = [int(i) for i in arr.cands]
        pos = {int(i): j for j, i in enumerate(arr.cands)}
        shown: list[int] = []
        for _ in range(k):
            arm = self.policy.pull(left)
            shown.append(pos[arm])
            left.remove(arm)
        return np.array(shown, dtype=np.intp)

    def learn(self, arr: Arrival, shown: np.ndarray, rewards: np.ndarray) -> None:
        for j, r in zip(shown.tolist(), rewards.tolist(), strict=True):
            self.policy.update(int(arr.cands[j]), r)


def close_all(agents: Sequence[object]) -> None:
    for a in agents:
        finish = getattr(a, "finish", None)
        if finish is not None:
            finish()
