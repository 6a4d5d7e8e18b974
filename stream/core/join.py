"""Reward join: impressions ⋈ clicks/purchases inside an event-time attribution window.

A shown item's reward is the largest configured weight of the feedback it got
within ``window_s`` of its impression (event time), 0 when none came. An
impression is closed — emitted with its rewards — once the partition's
watermark (the largest event time seen on it) passes ``ts + window_s``.

Everything is per partition: events are keyed by user_id, so an impression and
its feedback share a partition, and the order of closing depends only on that
partition's order — replaying a partition from a checkpoint closes the same
impressions with the same rewards, however polls interleave partitions.

>>> j = RewardJoiner(window_s=60, weights={"click": 1.0, "purchase": 2.0})
>>> j.add_impression(0, Pending("r1", "u1", 100.0, ("a", "b"), (1.0, 1.0), {}))
[]
>>> j.add_feedback(0, "r1", "b", "click", 130.0)
[]
>>> [(c.request_id, c.rewards) for c in j.advance(0, 161.0)]
[('r1', [0.0, 1.0])]
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

#: Why feedback (or an impression) joined nothing: no open impression with its request id
#: (never shown, or its window already closed), event time outside the window, another
#: user's feedback, an item the impression did not show; a second impression for one request.
UNJOINED = ("unknown_request", "outside_window", "wrong_user", "item_not_shown",
            "repeated_request")


@dataclass(slots=True)
class Pending:
    """An impression waiting for its attribution window to close."""

    request_id: str
    user_id: str
    ts: float
    items: tuple[str, ...]
    propensities: tuple[float, ...]
    user: dict[str, Any]
    rewards: list[float] = field(default_factory=list)
    policy_version: str = ""  # what chose the slate (reward per policy version and source)
    partition: int = -1  # the events partition it came from (-1: not recorded)
    experiment: str = ""  # the online experiment and arm that served it ("": none)
    arm: str = ""

    def __post_init__(self) -> None:
        if not self.rewards:
            self.rewards = [0.0] * len(self.items)


@dataclass
class _PartitionState:
    watermark: float = float("-inf")
    heap: list[tuple[float, int, str]] = field(default_factory=list)  # (ts, seq, request_id)


class RewardJoiner:
    """Holds open impressions per partition and closes them by watermark."""

    def __init__(self, window_s: float, weights: dict[str, float]) -> None:
        self.window_s = float(window_s)
        self.weights = dict(weights)
        self._open: dict[str, Pending] = {}
        self._partitions: dict[int, _PartitionState] = {}
        self._seq = 0
        self.orphans = 0  # feedback (or a repeated impression) that joined nothing
        #: ``orphans`` by reason (:data:`UNJOINED`), since this process started
        self.unjoined: dict[str, int] = dict.fromkeys(UNJOINED, 0)

    def __len__(self) -> int:
        return len(self._open)

    def _state(self, partition: int) -> _PartitionState:
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _PartitionState()
        return state

    # add_impression, add_feedback and _advance run once per event: they look the partition
    # up inline, and _advance leaves at once when the watermark closes nothing.

    def pending(self, request_id: str) -> Pending | None:
        """The open impression of ``request_id`` (None: none open, or already closed)."""
        return self._open.get(request_id)

    def add_impression(self, partition: int, pending: Pending) -> list[Pending]:
        state = self._partitions.get(partition) or self._state(partition)
        if pending.request_id in self._open:
            self._unjoined("repeated_request")  # a second impression: keep the first
        else:
            self._open[pending.request_id] = pending
            self._seq += 1
            heapq.heappush(state.heap, (pending.ts, self._seq, pending.request_id))
        return self._advance(state, pending.ts)

    def add_feedback(self, partition: int, request_id: str, item_id: str, kind: str,
                     ts: float, user_id: str | None = None) -> list[Pending]:
        """Join feedback to its open impression; ``user_id`` (when given) must be the
        impression's. Feedback that joins nothing is counted by reason (``unjoined``)."""
        pending = self._open.get(request_id)
        if pending is None:
            self._unjoined("unknown_request")
        elif not pending.ts <= ts <= pending.ts + self.window_s:
            self._unjoined("outside_window")
        elif user_id is not None and user_id != pending.user_id:
            self._unjoined("wrong_user")
        elif item_id in pending.items:
            pos = pending.items.index(item_id)
            weight = self.weights[kind]
            if weight > pending.rewards[pos]:
                pending.rewards[pos] = weight
        else:
            self._unjoined("item_not_shown")
        return self._advance(self._partitions.get(partition) or self._state(partition), ts)

    def _unjoined(self, reason: str) -> None:
        self.orphans += 1
        self.unjoined[reason] += 1

    def advance(self, partition: int, ts: float) -> list[Pending]:
        """Move the partition's watermark to ``ts`` and return impressions it closes."""
        return self._advance(self._state(partition), ts)

    def _advance(self, state: _PartitionState, ts: float) -> list[Pending]:
        if ts > state.watermark:
            state.watermark = ts
        heap, window, watermark = state.heap, self.window_s, state.watermark
        if not heap or heap[0][0] + window >= watermark:
            return []
        closed = []
        while heap and heap[0][0] + window < watermark:
            _, _, request_id = heapq.heappop(heap)
            closed.append(self._open.pop(request_id))
        return closed

    def flush(self, partitions: Iterable[int] | None = None) -> list[Pending]:
        """Close every open impression (end of a bounded run) of ``partitions`` (default:
        all), in (ts, arrival) order."""
        states = [s for p, s in self._partitions.items()
                  if partitions is None or p in set(partitions)]
        everything = sorted(entry for s in states for entry in s.heap)
        for state in states:
            state.heap.clear()
        return [self._open.pop(request_id) for _, _, request_id in everything]

    def drop_if(self, predicate: Callable[[Pending], bool]) -> int:
        """Forget every open impression ``predicate`` holds for (erasure): it never closes,
        so nothing of it is learnt. Returns how many were dropped."""
        gone = {rid for rid, p in self._open.items() if predicate(p)}
        if not gone:
            return 0
        for rid in gone:
            del self._open[rid]
        for state in self._partitions.values():
            kept = [entry for entry in state.heap if entry[2] not in gone]
            if len(kept) != len(state.heap):
                heapq.heapify(kept)
                state.heap = kept
        return len(gone)

    def partition_state(self, partition: int) -> dict[str, Any]:
        """JSON-able state of one partition: its watermark and open impressions (what a
        statistics delta carries, so the partition's next owner continues the join)."""
        state = self._partitions.get(partition) or _PartitionState()
        return {"watermark": state.watermark,
                "open": [asdict(self._open[rid]) for _, _, rid in sorted(state.heap)]}

    def load_partition(self, partition: int, state: dict[str, Any]) -> None:
        """Replace one partition's state with :meth:`partition_state` output."""
        old = self._partitions.pop(partition, None)
        for _, _, rid in old.heap if old is not None else ():
            self._open.pop(rid, None)
        new = self._partitions[partition] = _PartitionState(watermark=state["watermark"])
        for fields in state["open"]:
            pending = Pending(**{**fields, "items": tuple(fields["items"]),
                                 "propensities": tuple(fields["propensities"])})
            self._open[pending.request_id] = pending
            self._seq += 1
            heapq.heappush(new.heap, (pending.ts, self._seq, pending.request_id))

    def state(self) -> dict[str, Any]:
        """JSON-able state for checkpoints."""
        return {
            "seq": self._seq,
            "orphans": self.orphans,
            "watermarks": {str(p): s.watermark for p, s in self._partitions.items()},
            "open": [
                [p, seq, asdict(self._open[rid])]
                for p, s in self._partitions.items() for (_, seq, rid) in s.heap
            ],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self._seq = state["seq"]
        self.orphans = state["orphans"]
        self._open.clear()
        self._partitions = {int(p): _PartitionState(watermark=w)
                            for p, w in state["watermarks"].items()}
        for partition, seq, fields in state["open"]:
            pending = Pending(**{**fields, "items": tuple(fields["items"]),
                                 "propensities": tuple(fields["propensities"]),
                                 "partition": int(partition)})
            self._open[pending.request_id] = pending
            heapq.heappush(self._state(partition).heap, (pending.ts, seq, pending.request_id))


class SeenIds:
    """Bounded memory of processed event_ids (oldest forgotten first).

    >>> s = SeenIds(capacity=2)
    >>> [s.check_and_add(x) for x in ["a", "b", "a", "c", "a"]]
    [False, False, True, False, False]
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def check_and_add(self, event_id: str) -> bool:
        """True if ``event_id`` was seen already; otherwise remember it and return False."""
        if event_id in self._ids:
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False

    def add_many(self, event_ids: Iterable[str]) -> None:
        """Remember ``event_ids`` (seen elsewhere: another worker's partition)."""
        for event_id in event_ids:
            self.check_and_add(event_id)

    def state(self) -> list[str]:
        return list(self._ids)

    def load_state(self, ids: list[str]) -> None:
        self._ids = OrderedDict.fromkeys(ids[-self.capacity:])
