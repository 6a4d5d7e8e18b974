"""Statistics deltas: what one events partition taught, over one offset range, as a signed
message for ``fairstream.stats`` (see ``docs/scaling.md``).

A delta carries the additive statistics of the rows learnt from events partition
``partition`` between offsets ``start`` and ``end`` (``start = -1``: from the log
start), and the user state that partition had at ``end``: its open impressions, the
profiles its closed impressions touched, the event ids added to the dedup memory and
the closed impressions the running online experiment counted. A worker folds it only
when ``start`` is where its own state of that partition stands, so folding is
idempotent (:meth:`LearningState.absorb`).

Encoding (no pickle, format 2): a magic line, the length of a JSON header, the header
(the delta's fields and, for each array, its name, dtype and shape), the arrays' raw
little-endian bytes one after the other (8-byte aligned), then an HMAC-SHA256 of all
of it under the policy signing key::

    b"FSDELTA2\\n" | u32 len | JSON header | pad | arrays | HMAC(key, all before)

One pass to sign, one to verify, and arrays read with ``numpy.frombuffer``: a delta
holds every touched item's block (megabytes), and format 1 (an ``.npz``, a SHA-256,
then the HMAC) cost five times as much to write. Format 1 deltas (``FSDELTA1``) are
still read: ``fairstream.stats`` keeps every delta.

>>> import numpy as np
>>> from bandits import HybridStats
>>> s = HybridStats.from_rows(np.eye(2), np.array([1.0, 0.0]), ["a", "b"], z="bias",
...                           feature_space="fs")
>>> d = StatsDelta(partition=3, start=-1, end=10, stats=s, source="w1")
>>> back = load_delta(dump_delta(d, key=b"k"), key=b"k")
>>> back.partition, back.start, back.end, back.stats.allclose(s), back.stats.item_ids
(3, -1, 10, True, ('a', 'b'))
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bandits import FeatureSpaceMismatch, HybridStats, SufficientStats
from bandits.hybrid_stats import item_sums
from learners.sample import SampleRows
from stream.exceptions import DeltaError

if TYPE_CHECKING:
    from stream.core.state import LearningState

MAGIC_V1 = b"FSDELTA1\n"
MAGIC = b"FSDELTA2\n"
_DIGEST = 32
FORMAT_VERSION = 2
_ALIGN = 8


@dataclass(frozen=True, eq=False)
class StatsDelta:
    """One partition's statistics and user state over ``[start, end)``."""

    partition: int
    start: int
    end: int
    stats: SufficientStats
    source: str = ""
    #: the reward join's state of the partition at ``end`` (``RewardJoiner.partition_state``)
    joiner: dict[str, Any] | None = None
    #: profiles touched in the range, as ``ProfileStore.entries`` gives them
    users: list[str] = field(default_factory=list)
    means: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    last_seen: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: event ids of the range added to the dedup memory, in order
    seen: list[str] = field(default_factory=list)
    #: rows of the range in the partition's bottom-k sample after it (a coordinated
    #: fine-tune's: ``learners.sample``); None when the sender keeps no samples
    sample: SampleRows | None = None
    #: the range's closed impressions counted by the running online experiment, as
    #: ``[experiment, arm, user, rewards, item groups, user groups]`` (what
    #: :meth:`ExperimentResults.observe` takes): every worker's results are the group's
    experiment: list[list[Any]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.stats.n

    def __repr__(self) -> str:
        return (f"StatsDelta(partition={self.partition}, [{self.start}, {self.end}), "
                f"rows={self.rows}, users={len(self.users)}, source={self.source!r})")


def dump_delta(delta: StatsDelta, key: bytes) -> bytes:
    """Encode and sign ``delta`` (format 2, module doc)."""
    header, arrays = _fields(delta)
    header["format"] = FORMAT_VERSION
    layout, parts, at = [], [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        layout.append([name, a.dtype.str, list(a.shape)])
        raw = a.tobytes()
        parts.append(raw + b"\0" * (-len(raw) % _ALIGN))
        at += len(parts[-1])
    header["arrays"] = layout
    head = json.dumps(header).encode()
    head += b" " * (-(len(MAGIC) + 4 + len(head)) % _ALIGN)  # arrays start aligned
    body = b"".join([MAGIC, len(head).to_bytes(4, "little"), head, *parts])
    return body + hmac.new(key, body, hashlib.sha256).digest()


def _fields(delta: StatsDelta) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    s = delta.stats
    header: dict[str, Any] = {
        "partition": delta.partition, "start": delta.start,
        "end": delta.end, "source": delta.source, "feature_space": s.feature_space,
        "n": s.n, "joiner": delta.joiner, "users": list(delta.users),
        "seen": list(delta.seen)}
    arrays = {"xtx": np.asarray(s.xtx, np.float64), "xty": np.asarray(s.xty, np.float64),
              "means": np.asarray(delta.means, np.float32),
              "weights": np.asarray(delta.weights, np.float64),
              "last_seen": np.asarray(delta.last_seen, np.float64)}
    if isinstance(s, HybridStats):
        header["z"] = s.z if s.z == "bias" else list(s.z)
        header["item_ids"] = list(s.item_ids)
        arrays |= {"item_xz": np.asarray(s.item_xz, np.float64),
                   "item_zr": np.asarray(s.item_zr, np.float64),
                   "item_n": np.asarray(s.item_n, np.float64)}
    if delta.experiment:
        header["experiment"] = delta.experiment
    if delta.sample is not None:
        header["sample_rows"] = list(delta.sample.row_ids)
        header["sample_items"] = list(delta.sample.item_ids)
        arrays |= {f"sample_{k}": v for k, v in delta.sample.arrays().items()}
    return header, arrays


def dump_delta_v1(delta: StatsDelta, key: bytes) -> bytes:
    """Format 1 (``.npz``, SHA-256, HMAC): what older workers wrote; kept to test that
    such deltas, still on the topic, are read."""
    header, arrays = _fields(delta)
    header["format"] = 1
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
             **arrays)
    body = MAGIC_V1 + buf.getvalue()
    body += hashlib.sha256(body).digest()
    return body + hmac.new(key, body, hashlib.sha256).digest()


def load_delta(data: bytes, key: bytes) -> StatsDelta:
    """Verify and decode a delta; raises :class:`~stream.exceptions.DeltaError`."""
    data = bytes(data)
    v1 = data.startswith(MAGIC_V1)
    if len(data) < len(MAGIC) + 4 + _DIGEST or not (v1 or data.startswith(MAGIC)):
        raise DeltaError("format", "not a fairstream statistics delta")
    body, signature = data[:-_DIGEST], data[-_DIGEST:]
    if v1:
        content, checksum = body[:-_DIGEST], body[-_DIGEST:]
        if not hmac.compare_digest(hashlib.sha256(content).digest(), checksum):
            raise DeltaError("checksum", "content does not match its SHA-256")
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), signature):
        raise DeltaError("signature", "HMAC does not verify (tampered, or another key)")
    try:
        if v1:
            with np.load(io.BytesIO(content[len(MAGIC_V1):]), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            h = json.loads(arrays.pop("__meta__").tobytes())
        else:
            h, arrays = _read_v2(body)
        if h.get("format") != (1 if v1 else FORMAT_VERSION):
            raise DeltaError("format", f"delta format {h.get('format')} behind the "
                                       f"magic of format {1 if v1 else FORMAT_VERSION}")
        if "item_ids" in h:
            z = h["z"] if h["z"] == "bias" else tuple(h["z"])
            stats: SufficientStats = HybridStats(
                arrays["xtx"], arrays["xty"], h["n"], h["feature_space"], z=z,
                item_ids=tuple(h["item_ids"]), item_xz=arrays["item_xz"],
                item_zr=arrays["item_zr"], item_n=arrays["item_n"])
        else:
            stats = SufficientStats(arrays["xtx"], arrays["xty"], h["n"], h["feature_space"])
        sample = None
        if "sample_rows" in h:
            sample = SampleRows.from_arrays(
                {k.removeprefix("sample_"): v for k, v in arrays.items()
                 if k.startswith("sample_")}, h["sample_rows"], h["sample_items"])
        users = list(h["users"])
        if not len(users) == len(arrays["means"]) == len(arrays["weights"]) \
                == len(arrays["last_seen"]):
            raise DeltaError("format", "profile arrays do not match the user list")
        return StatsDelta(partition=int(h["partition"]), start=int(h["start"]),
                          end=int(h["end"]), stats=stats, source=str(h["source"]),
                          joiner=h["joiner"], users=users, means=arrays["means"],
                          weights=arrays["weights"], last_seen=arrays["last_seen"],
                          seen=list(h["seen"]), sample=sample,
                          experiment=_experiment_rows(h.get("experiment", [])))
    except DeltaError:
        raise
    except Exception as exc:  # any malformed content is one kind of failure: format
        raise DeltaError("format", f"{type(exc).__name__}: {exc}") from exc


def _experiment_rows(rows: Any) -> list[list[Any]]:
    """The experiment rows of a delta's header, checked (a malformed one: format)."""
    out = []
    for row in rows:
        name, arm, user, rewards, item_groups, user_groups = row
        rewards = [float(r) for r in rewards]
        if not (isinstance(name, str) and isinstance(arm, str) and isinstance(user, str)
                and len(rewards) == len(item_groups)
                and all(isinstance(g, str) for g in [*item_groups, *user_groups])):
            raise ValueError(f"malformed experiment row {row!r:.200}")
        out.append([name, arm, user, rewards, list(item_groups), list(user_groups)])
    return out


#: The Kafka record header naming a delta's ``partition,start,end`` (ASCII), so a reader
#: can skip a delta it would not fold without verifying and decoding it.
SPAN_HEADER = "fairstream-delta-span"


def span_header(delta: StatsDelta) -> list[tuple[str, bytes]]:
    return [(SPAN_HEADER, f"{delta.partition},{delta.start},{delta.end}".encode())]


def delta_span(headers: Any) -> tuple[int, int, int] | None:
    """``(partition, start, end)`` from a record's headers; None without (or with a
    malformed) span header: the reader then decodes the delta to learn it.

    >>> delta_span([(SPAN_HEADER, b"2,-1,40")]), delta_span([]), delta_span(None)
    ((2, -1, 40), None, None)
    """
    for name, value in headers or ():
        if name == SPAN_HEADER:
            try:
                p, start, end = (int(v) for v in value.split(b","))
            except ValueError:
                return None
            return p, start, end
    return None


def _read_v2(body: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and arrays of a verified format-2 body (copies: the caller owns them)."""
    at = len(MAGIC) + 4
    size = int.from_bytes(body[len(MAGIC):at], "little")
    h = json.loads(body[at:at + size])
    at += size
    arrays = {}
    for name, dtype, shape in h.pop("arrays"):
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise ValueError(f"array {name!r} of dtype {dtype}")
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(body, dtype=dt, count=count, offset=at) \
            .reshape(shape).copy()
        at += count * dt.itemsize
        at += -at % _ALIGN
    if at != len(body):
        raise ValueError("the arrays do not fill the delta")
    return h, arrays


class StatsAccumulator:
    """Additive statistics of rows learnt since the last :meth:`take`, in one feature
    space: the shared ``(XᵀX, Xᵀr, n)`` and, with ``z`` (a hybrid policy's layout),
    the per-item blocks ``(B_a, c_a, n_a)``. Adds in place (no copy per batch).

    >>> import numpy as np
    >>> acc = StatsAccumulator(dim=2, feature_space="fs", z="bias")
    >>> acc.add(np.eye(2), np.array([1.0, 0.0]), ["a", "b"])
    >>> acc.add(np.eye(2), np.array([1.0, 1.0]), ["a", "a"])
    >>> s = acc.take()
    >>> s.n, s.item_ids, s.item_n.tolist(), acc.rows
    (4, ('a', 'b'), [3.0, 1.0], 0)
    """

    def __init__(self, dim: int, feature_space: str, z: Any = None) -> None:
        self.dim, self.feature_space = int(dim), feature_space
        self.z = None if z is None else (z if z == "bias" else tuple(z))
        self.k = 0 if self.z is None else (1 if self.z == "bias" else len(self.z))
        self._reset()

    def _reset(self) -> None:
        d, k = self.dim, self.k
        self.xtx, self.xty, self.rows = np.zeros((d, d)), np.zeros(d), 0
        self._slot: dict[str, int] = {}
        self._xz, self._zr, self._n = np.zeros((64, k, d)), np.zeros((64, k)), np.zeros(64)

    def add(self, X: np.ndarray, r: np.ndarray, item_ids: list[str] | None = None) -> None:
        if not len(X):
            return
        self.xtx += X.T @ X
        self.xty += X.T @ r
        self.rows += len(X)
        if self.z is None:
            return
        if item_ids is None:
            raise ValueError("a hybrid accumulator needs the rows' item ids")
        inv = self._slots_of(item_ids)
        items, group = np.unique(inv, return_inverse=True)
        blocks, zr, counts = _item_blocks(X, r, group, len(items), self.z)
        self._xz[items] += blocks
        self._zr[items] += zr
        self._n[items] += counts

    def add_stats(self, stats: SufficientStats) -> None:
        """Add a batch's statistics already summed: what the policy's own update added
        for those rows (:meth:`HybridPolicy.batch_stats`), the sums :meth:`add` would
        compute from them again."""
        if stats.feature_space != self.feature_space:
            raise FeatureSpaceMismatch(self.feature_space, stats.feature_space)
        self.xtx += stats.xtx
        self.xty += stats.xty
        self.rows += stats.n
        if self.z is None:
            return
        if not isinstance(stats, HybridStats) or stats.z != self.z:
            raise ValueError("a hybrid accumulator adds hybrid statistics of its z layout")
        idx = self._slots_of(stats.item_ids)  # distinct ids: one slot each
        self._xz[idx] += stats.item_xz
        self._zr[idx] += stats.item_zr
        self._n[idx] += stats.item_n

    def _slots_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Each id's slot (new ids get the next ones; the arrays grow to hold them)."""
        slot = self._slot
        inv = np.fromiter((slot.setdefault(i, len(slot)) for i in item_ids), dtype=np.intp,
                          count=len(item_ids))
        if len(slot) > len(self._n):
            cap = 2 * len(slot)
            for name in ("_xz", "_zr", "_n"):
                old = getattr(self, name)
                new = np.zeros((cap, *old.shape[1:]))
                new[:len(old)] = old
                setattr(self, name, new)
        return inv

    def take(self) -> SufficientStats:
        """The statistics accumulated so far; starts over."""
        if self.z is None:
            out: SufficientStats = SufficientStats(self.xtx, self.xty, self.rows,
                                                   self.feature_space)
        else:
            u = len(self._slot)
            out = HybridStats(self.xtx, self.xty, self.rows, self.feature_space, z=self.z,
                              item_ids=tuple(self._slot), item_xz=self._xz[:u],
                              item_zr=self._zr[:u], item_n=self._n[:u])
        self._reset()
        return out


def _item_blocks(X: np.ndarray, r: np.ndarray, group: np.ndarray, groups: int,
                 z: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group ``g``: ``(Σ z_i x_iᵀ, Σ z_i r_i, count)`` (:func:`bandits.item_sums`)."""
    Z = np.ones((len(X), 1)) if z == "bias" else X[:, list(z)]
    return item_sums(X, r, Z, group, groups)


def cut_delta(state: LearningState, partition: int, start: int, stats: SufficientStats,
              users: list[str], seen: list[str], source: str = "",
              experiment: list[list[Any]] | None = None) -> StatsDelta:
    """The delta of ``partition`` from ``start`` to where ``state`` stands: ``stats`` and
    the user state it moved (the profiles of ``users``, the join, the ids ``seen``, and,
    when the state keeps samples, the rows that entered the partition's sample), and
    the range's ``experiment`` rows."""
    held, means, weights, last_seen = state.profiles.entries(users)
    return StatsDelta(partition=partition, start=start, end=state.offsets[partition],
                      stats=stats, source=source,
                      joiner=state.joiner.partition_state(partition), users=list(held),
                      means=means, weights=weights, last_seen=last_seen, seen=list(seen),
                      sample=state.fresh_sample(partition), experiment=experiment or [])


def fold_delta(state: LearningState, delta: StatsDelta, profiles: bool = True) -> bool:
    """Fold ``delta`` into ``state`` if it starts where the state's partition stands:
    statistics merged (into the model of the partition's feature space: the new one's
    once the partition has re-based during a switch, ``LearningState.space_of``), the
    partition's user state installed (its profiles only with ``profiles``: a worker that
    restores them from the changelog when it takes the partition leaves them out), its
    sample rows merged, its offset moved to the delta's end. False, with nothing
    changed, otherwise; a delta of another feature space raises
    :class:`~bandits.FeatureSpaceMismatch`, with nothing changed."""
    p = delta.partition
    if state.offsets.get(p, -1) != delta.start:
        return False
    fmap, policy = state.space_of(p)
    if delta.stats.feature_space != fmap.feature_space:
        if p not in state.unbased:
            raise FeatureSpaceMismatch(fmap.feature_space, delta.stats.feature_space)
        # rebuilding without a checkpoint: an earlier epoch's statistics, which the
        # partition's re-base into the current space replaces (LearningState.unbased)
    else:
        state.unbased.discard(p)  # its chain is in the current space
        if delta.stats.n:
            policy.merge(delta.stats)
            state.count_rows(p, delta.stats.n)
    if profiles and delta.users:
        state.profiles.put(delta.users, delta.means, delta.weights, delta.last_seen)
    if delta.joiner is not None:
        state.joiner.load_partition(p, delta.joiner)
    state.seen.add_many(delta.seen)
    if delta.sample is not None:
        state.offer_sample(p, delta.sample)
    return state.absorb(p, delta.start, delta.end)


# -- re-base markers (one coordinated fine-tune: docs/scaling.md) ----------------------------

REBASE_MAGIC = b"FSREBAS1\n"
#: The Kafka record header of a re-base marker: ``partition,epoch,at`` (ASCII). A record
#: without it on ``fairstream.stats`` is a delta.
REBASE_HEADER = "fairstream-rebase"


@dataclass(frozen=True)
class RebaseMarker:
    """Events partition ``partition`` re-bases into epoch ``epoch``'s feature space at
    offset ``at``: its statistics before ``at`` (old space, all in the deltas before this
    marker) are replaced by those of its sample as of ``at`` in the new space, and its
    deltas after the marker are in the new space. It carries the epoch itself (number,
    feature space, the adapter's bytes), so a reader needs nothing else to start the
    switch: each marker is also the epoch's announcement on its stats partition.

    >>> m = RebaseMarker(partition=1, epoch=2, at=40, feature_space="fs-x", adapter=b"ab")
    >>> load_marker(dump_marker(m, key=b"k"), key=b"k") == m
    True
    """

    partition: int
    epoch: int
    at: int
    feature_space: str
    adapter: bytes = field(repr=False)
    source: str = ""


def dump_marker(marker: RebaseMarker, key: bytes) -> bytes:
    """``REBASE_MAGIC | u32 len | JSON header | adapter bytes | HMAC(key, all before)``."""
    head = json.dumps({"partition": marker.partition, "epoch": marker.epoch,
                       "at": marker.at, "feature_space": marker.feature_space,
                       "source": marker.source}).encode()
    body = REBASE_MAGIC + len(head).to_bytes(4, "little") + head + marker.adapter
    return body + hmac.new(key, body, hashlib.sha256).digest()


def load_marker(data: bytes, key: bytes) -> RebaseMarker:
    """Verify and decode a marker; raises :class:`~stream.exceptions.DeltaError`."""
    data = bytes(data)
    if len(data) < len(REBASE_MAGIC) + 4 + _DIGEST or not data.startswith(REBASE_MAGIC):
        raise DeltaError("format", "not a fairstream re-base marker")
    body, signature = data[:-_DIGEST], data[-_DIGEST:]
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), signature):
        raise DeltaError("signature", "HMAC does not verify (tampered, or another key)")
    try:
        at = len(REBASE_MAGIC) + 4
        size = int.from_bytes(body[len(REBASE_MAGIC):at], "little")
        h = json.loads(body[at:at + size])
        return RebaseMarker(partition=int(h["partition"]), epoch=int(h["epoch"]),
                            at=int(h["at"]), feature_space=str(h["feature_space"]),
                            adapter=body[at + size:], source=str(h["source"]))
    except Exception as exc:
        raise DeltaError("format", f"{type(exc).__name__}: {exc}") from exc


def marker_header(marker: RebaseMarker) -> list[tuple[str, bytes]]:
    return [(REBASE_HEADER, f"{marker.partition},{marker.epoch},{marker.at}".encode())]


def is_marker(headers: Any) -> bool:
    """Whether a record's headers name it a re-base marker.

    >>> is_marker([(REBASE_HEADER, b"0,1,5")]), is_marker([(SPAN_HEADER, b"0,-1,5")])
    (True, False)
    """
    return any(name == REBASE_HEADER for name, _ in headers or ())
