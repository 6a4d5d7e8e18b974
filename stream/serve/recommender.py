"""The in-process recommender: what ``POST /recommend`` calls, and what a simulator can drive.

It serves one :class:`~stream.core.bundle.PolicyBundle` over an immutable
:class:`_View` (policy + feature map + catalog snapshot + the catalog's
adapted-embedding table for that feature space). Writers (the policy and
catalog followers) build a new view and swap one reference; a request reads
the reference once, so requests in flight finish on the view they started
with and nothing on the request path takes a lock.

Scoring, per request::

    X = φ(user, candidates) = fmap.transform(profile(user), attrs, adapted_items=table[rows])
    slate = policy.select(X, k, rng, item_ids=candidates)   # indices, propensities, scores

Profiles here come from the workers (``serve.profiles = "topic"``, the default:
:meth:`set_profiles`, each user's profile as the worker that learns the user holds
it, joined feedback on open impressions included), or, with ``"events"``, from *raw
feedback* (every click/purchase seen on fairstream.events, weighted by
``events.click_weight`` / ``purchase_weight``: :meth:`observe_feedback`): the server
has no attribution window, so those profiles can differ slightly from the worker's
(e.g. a click the worker would drop as outside the window still moves the server's
profile).

Randomness: a request without an explicit ``rng`` uses
:func:`request_rng` ``(seed, request_id)``, so any logged impression can be
re-derived from its request id. Policies that draw nothing (LinUCB and
ε-greedy at ε = 0) skip building it (~40 µs). Only policies that score by id
(``popular``) get ``item_ids``; the others ignore them.

>>> import numpy as np
>>> from bandits import LinUCB
>>> from learners import Adapter, FeatureMap
>>> from stream.core.bundle import dump_bundle, load_bundle
>>> E = np.random.default_rng(0).normal(size=(30, 384)).astype(np.float32)
>>> fmap = FeatureMap(Adapter.from_pca(E, out_dim=FeatureMap.adapter_dim(64)), dim=64)
>>> bundle = load_bundle(dump_bundle(LinUCB(dim=64, feature_space=fmap.feature_space), fmap,
...                                  key=b"k", version=1), key=b"k", dim=64)
>>> rec = Recommender(seed=0)
>>> rec.set_catalog([f"i{n}" for n in range(30)], E)
>>> rec.set_policy(bundle)
True
>>> r = rec.recommend("u1", {"gender": "F"}, ["i1", "i2", "i3"], k=2)
>>> len(r.items), r.propensities, r.policy_version
(2, [1.0, 1.0], '1')
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from bandits import ExposureController, predicted_reward
from learners import ProfileStore, user_groups
from stream.core.bundle import PolicyBundle
from stream.core.recent import RecentImpressions
from stream.experiments import Experiment
from stream.serve.exceptions import BadRequest, NotReady
from stream.serve.explain import Explanation, explain_slate
from stream.serve.split import Split
from stream.settings import MAX_K

log = logging.getLogger(__name__)

_UNUSED_RNG = np.random.default_rng(0)  # handed to policies that draw nothing


class Recommendation(msgspec.Struct, frozen=True, omit_defaults=True):
    """One answered request: the slate, best first, with what produced it: per item its
    score and propensity (the probability the policy had of showing it), the policy
    version and the request id that feedback names; with `explain`, each score in parts."""

    items: list[str]
    scores: list[float]
    propensities: list[float]
    policy_version: str
    request_id: str
    explanations: list[Explanation] | None = None
    experiment: str | None = None
    arm: str | None = None


def request_rng(seed: int, request_id: str) -> np.random.Generator:
    """The generator a request with this id uses: ``default_rng([seed, H(request_id)])``.

    >>> a, b = request_rng(0, "r1").random(), request_rng(0, "r1").random()
    >>> a == b != request_rng(0, "r2").random()
    True
    """
    digest = hashlib.blake2b(request_id.encode(), digest_size=16).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little"),
                                  int.from_bytes(digest[8:], "little")])


class _View(msgspec.Struct, frozen=True):
    """Everything one request reads, swapped as a unit."""

    bundle: PolicyBundle | None
    version: str
    ids: list[str]
    index: dict[str, int]
    emb: np.ndarray          # (n, 384) frozen embeddings, float32
    table: np.ndarray | None  # (n, k_item) adapted embeddings in bundle's feature space


#: Called with (recommendation, user_id, user attrs, ts) after each answered request.
ImpressionSink = Callable[[Recommendation, str, Mapping[str, Any], float], object]


class Recommender:
    """Scores candidates with the latest verified policy; swaps policy and catalog atomically.

    With an online experiment (:meth:`set_experiment`) each user is served by their arm
    (:class:`stream.serve.split.Split`): the served policy with the arm's exploration
    and exposure strength, or a pinned kept version (``kept``: version → bundle, the
    policy follower's); the slate's propensities are that arm policy's own.

    ``max_candidates`` / ``max_k`` bound one request's work. ``impressions``
    (e.g. :meth:`stream.serve.impressions.EventLog.log_impression`) is called
    once per answered request; leave it ``None`` when the caller publishes
    impressions itself (the demo's simulator does).
    """

    def __init__(self, seed: int = 0, profiles: ProfileStore | None = None,
                 max_candidates: int = 1000, max_k: int = MAX_K,
                 impressions: ImpressionSink | None = None,
                 exposure: ExposureController | None = None,
                 feedback_weights: Mapping[str, float] | None = None,
                 recent: RecentImpressions | None = None, thompson_v: float = 1.0) -> None:
        self.seed = int(seed)
        #: the posterior scale of an experiment arm that serves a linear policy by Thompson
        #: sampling (``bandit.v``; the served policy's own when it has one)
        self.thompson_v = float(thompson_v)
        self.profiles = profiles or ProfileStore()
        self.max_candidates = int(max_candidates)
        self.max_k = int(max_k)
        self.impressions = impressions
        #: FairCo-style exposure control (``fairness.exposure_strength``; None or λ = 0: off).
        #: Its deficits are per server process, accumulated over the requests it answers.
        self.exposure = exposure
        #: Impression discounting (``serve.impression_discount``; None or 0: off): items this
        #: process showed a user and the user has not clicked rank lower for a while.
        self.recent = recent
        self._groups: list[str] = []
        self.feedback_weights = dict(feedback_weights or {"click": 1.0, "purchase": 1.0})
        self._view = _View(None, "", [], {}, np.zeros((0, self.profiles.emb_dim), np.float32),
                           None)
        self._tables: dict[str, np.ndarray] = {}  # feature_space -> adapted catalog
        self._write = threading.Lock()            # writers only; readers never lock
        self._profile_lock = threading.Lock()
        # Request ids: a random per-process prefix + a counter (unique, cheaper than uuid4).
        self._id_prefix = uuid.uuid4().hex[:16] + "-"
        self._ids = itertools.count()
        self._attrs: dict[tuple[Any, Any], dict[str, Any]] = {}
        #: the online experiment's split (None: none runs); swapped as a unit
        self.split: Split | None = None
        #: kept verified bundles by version (pinned arms): the policy follower's
        self.kept: Callable[[int], PolicyBundle | None] = lambda _version: None

    def __repr__(self) -> str:
        v = self._view
        return (f"Recommender(policy_version={v.version or None!r}, catalog={len(v.ids)}, "
                f"profiles={len(self.profiles)})")

    # -- state -----------------------------------------------------------------------------------

    @property
    def bundle(self) -> PolicyBundle | None:
        return self._view.bundle

    @property
    def catalog_size(self) -> int:
        return len(self._view.ids)

    @property
    def ready(self) -> bool:
        v = self._view
        return v.bundle is not None and v.table is not None and len(v.ids) > 0

    def set_policy(self, bundle: PolicyBundle) -> bool:
        """Serve ``bundle`` from the next request on (True), unless it is already served."""
        with self._write:
            old = self._view
            if old.bundle is not None and old.bundle.version == bundle.version \
                    and old.bundle.feature_space == bundle.feature_space:
                return False
            table = self._table(bundle, old.emb)
            self._view = _View(bundle, str(bundle.version), old.ids, old.index, old.emb, table)
            return True

    def set_experiment(self, experiment: Experiment | None) -> Split | None:
        """Serve ``experiment``'s arms from the next request on (None: no experiment)."""
        self.split = None if experiment is None else Split(experiment, self.exposure,
                                                           thompson_v=self.thompson_v)
        return self.split

    def set_catalog(self, ids: Sequence[str], embeddings: np.ndarray,
                    groups: Sequence[str] | None = None) -> None:
        """Serve this catalog (ids in row order, frozen embeddings, and each item's exposure
        group for the exposure controller) from the next request on."""
        self._groups = list(groups) if groups is not None else ["unknown"] * len(ids)
        emb = np.array(embeddings, dtype=np.float32, copy=True)
        if emb.ndim != 2 or emb.shape[0] != len(ids):
            raise ValueError(f"embeddings must be ({len(ids)}, d), got {emb.shape}")
        ids = list(ids)
        with self._write:
            old = self._view
            # Embeddings of existing rows can change (an item's text was edited): drop
            # tables whose prefix no longer matches, extend the others incrementally.
            n_old = len(old.ids)
            same_prefix = (n_old <= len(ids) and ids[:n_old] == old.ids
                           and np.array_equal(emb[:n_old], old.emb))
            if not same_prefix:
                self._tables.clear()
            table = None if old.bundle is None else self._table(old.bundle, emb)
            self._view = _View(old.bundle, old.version, ids, {i: n for n, i in enumerate(ids)},
                               emb, table)

    def _table(self, bundle: PolicyBundle, emb: np.ndarray) -> np.ndarray:
        """The adapted catalog in ``bundle``'s feature space, cached and grown incrementally."""
        fs = bundle.feature_space
        table = self._tables.get(fs)
        n = len(emb)
        if table is None or len(table) > n:
            table = bundle.fmap.adapt(emb) if n else np.zeros((0, bundle.fmap.k_item))
        elif len(table) < n:
            table = np.vstack([table, bundle.fmap.adapt(emb[len(table):])])
        # Keep only the served space and this one: bounded memory across fine-tunes.
        served = self._view.bundle.feature_space if self._view.bundle else None
        self._tables = {k: v for k, v in self._tables.items() if k == served}
        self._tables[fs] = table
        return table

    def note_click(self, user_id: str, item_id: str) -> None:
        """A click or purchase reported to this server (``POST /feedback``): the item stops
        being discounted at once. The profile changes when the event comes back from
        Kafka (:meth:`observe_feedback`), so it is counted once whichever way it came."""
        if self.recent is not None:
            self.recent.clicked(user_id, item_id)

    def observe_feedback(self, user_id: str, item_id: str, kind: str,
                         ts: float | None = None) -> bool:
        """Fold a raw click/purchase into the user's profile; False if the item is unknown."""
        v = self._view
        row = v.index.get(item_id)
        if row is None:
            return False
        with self._profile_lock:
            self.profiles.observe(user_id, v.emb[row], self.feedback_weights.get(kind, 1.0),
                                  now=ts)
        self.note_click(user_id, item_id)
        return True

    def set_profiles(self, user_ids: Sequence[str], means: Sequence[np.ndarray],
                     weights: Sequence[float], last_seen: Sequence[float],
                     drop: Sequence[str] = ()) -> None:
        """Take these users' profiles as their workers learnt them, and drop ``drop``'s
        (``serve.profiles = "topic"``: :class:`stream.serve.follower.ProfileFollower`)."""
        with self._profile_lock:
            if drop:
                self.profiles.forget(drop)
            if user_ids:
                self.profiles.put_rows(user_ids, means, weights, last_seen)

    def forget_profiles(self, erased: Callable[[Iterable[str]], set[str]]) -> int:
        """Drop the profiles (and what the impression discount remembers) of the users
        ``erased`` picks out of those held (erasure)."""
        if self.recent is not None:
            for user in erased(self.recent.users()):
                self.recent.forget(user)
        with self._profile_lock:
            return self.profiles.forget(erased(self.profiles.users()))

    def _canonical(self, user: Mapping[str, Any] | None) -> dict[str, Any]:
        """φ reads gender and age bucket only; map raw values once (an age → its bucket)."""
        if not user:
            return {}
        key = (user.get("gender"), user.get("age"))
        try:
            attrs = self._attrs.get(key)
        except TypeError:  # unhashable values from an in-process caller
            return dict(user)
        if attrs is None:
            groups = user_groups(user)
            attrs = {name: value for name, value in groups.items() if value != "unknown"}
            if len(self._attrs) > 4096:  # bounded: raw values come from clients
                self._attrs.clear()
            self._attrs[key] = attrs
        return attrs

    # -- deciding --------------------------------------------------------------------------------

    def recommend(self, user_id: str, user: Mapping[str, Any] | None = None,
                  candidates: Sequence[str] | None = None, k: int = 5,
                  rng: np.random.Generator | None = None,
                  request_id: str | None = None, now: float | None = None,
                  explain: bool = False) -> Recommendation:
        """Rank ``k`` of ``candidates`` (default: the whole catalog) for ``user_id``;
        ``explain``: with each score's parts.

        Raises :class:`BadRequest` (``too_many_candidates``, ``duplicate_candidate``,
        ``unknown_item``, ``invalid_k``) or :class:`NotReady`.
        """
        v = self._view  # the one read: a swap mid-request does not affect this request
        if v.bundle is None or v.table is None or not v.ids:
            raise NotReady("no verified policy yet" if v.bundle is None else "no catalog yet")
        rows = None
        if candidates is None:
            ids: Sequence[str] = v.ids
        else:
            n = len(candidates)
            if n > self.max_candidates:
                raise BadRequest("too_many_candidates",
                                 f"{n} candidates > limit {self.max_candidates}")
            index = v.index
            try:
                rows = [index[c] for c in candidates]
            except KeyError:
                unknown = [c for c in candidates if c not in index]
                raise BadRequest("unknown_item",
                                 f"{len(unknown)} candidate(s) not in the catalog: "
                                 f"{unknown[:5]}") from None
            if len(set(rows)) != n:
                raise BadRequest("duplicate_candidate", "candidates contains duplicates")
            ids = candidates
        n = len(ids)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) \
                or not 1 <= k <= min(self.max_k, n):
            raise BadRequest("invalid_k",
                             f"k={k!r} must be in 1..{min(self.max_k, n)} "
                             f"(max_k={self.max_k}, {n} candidates)")
        if request_id is None:
            request_id = f"{self._id_prefix}{next(self._ids):x}"
        split, exposure = self.split, self.exposure
        if split is None:
            bundle, policy, table, arm = v.bundle, v.bundle.policy, v.table, None
        else:
            arm = split.router.arm(user_id)
            bundle, policy, table, exposure = split.resolve(arm, v.bundle, v.table, v.emb,
                                                            self.kept)
        fmap = bundle.fmap
        adapted = table if rows is None else table[rows]
        if rng is None:
            rng = (_UNUSED_RNG if getattr(policy, "epsilon", None) == 0.0
                   else request_rng(self.seed, request_id))
        profile = self.profiles.get(user_id)
        X = fmap.transform(None, profile, self._canonical(user), adapted_items=adapted)
        control = exposure is not None and exposure.lam > 0
        if control:
            all_rows = range(len(ids)) if candidates is None else rows
            groups = [self._groups[r] for r in all_rows]
            bonus = exposure.bonus(groups)
        by_id = ids if policy.uses_item_ids else None
        at = time.time() if now is None else now
        offset, seen = bonus if control else None, None
        if self.recent is not None:
            seen = self.recent.penalties(user_id, ids, at,
                                         index=v.index if candidates is None else None)
            if seen is not None:
                offset = seen if offset is None else offset + seen
        slate = policy.select(X, int(k), rng=rng, bonus=offset, item_ids=by_id)
        if control:
            # Merit = the model's estimated relevance of every candidate (FairCo); the
            # candidates target counts every candidate alike and needs no prediction.
            merit = predicted_reward(policy, X, by_id) if exposure.needs_merit else None
            exposure.observe(groups, slate.indices, merit)
        parts = explain_slate(policy, X, slate, ids, bonus if control else None,
                              k_item=fmap.k_item, k_profile=fmap.k_profile,
                              discount=seen) if explain else None
        rec = Recommendation([ids[i] for i in slate.indices.tolist()], slate.scores.tolist(),
                             slate.propensities.tolist(),
                             v.version if bundle is v.bundle else str(bundle.version),
                             request_id, parts,
                             None if arm is None else split.experiment.name, arm)
        if self.recent is not None:
            self.recent.shown(user_id, rec.items, at)
        if self.impressions is not None:
            self.impressions(rec, user_id, user or {}, at)
        return rec
