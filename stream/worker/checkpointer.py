"""The checkpointer: one unit that makes a checkpoint and everything it depends on durable.

A checkpoint covers offsets, so before it is written every message sent on behalf of
the records it covers must be acknowledged: the dead letters of rejected records, and
the policy bundles and fairness reports whose version the state carries. In order:

1. start sending what is still to send (``acked`` sinks that have a ``start_settle``:
   the statistics exchange cuts its deltas), without waiting;
2. take the state and encode it, while the broker acknowledges (nothing learns
   meanwhile: the worker loop is the one that checkpoints);
3. settle what must be acked (``acked``: the dead-letter sender, which retries and
   raises rather than let a checkpoint cover a lost dead letter, the publisher, the
   exchange's deltas and changelog);
4. write state + offsets, atomically (:func:`stream.core.checkpoint.write_atomic`);
5. commit those offsets to the group (best effort: the checkpoint is the source of
   truth; commits feed lag tooling).

A crash anywhere before 4 leaves the previous checkpoint, whose offsets nothing sent
since can be missing from.

It also owns the published-version record, a file beside the checkpoint holding the
number of the last published policy (written before the bundle is sent), and the
restore that reads both back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from learners import FeatureMap
from stream import failpoints
from stream.core.catalog import Catalog
from stream.core.checkpoint import (
    Checkpoint,
    CheckpointError,
    encode_checkpoint,
    read_checkpoint,
    write_atomic,
)
from stream.core.state import LearningState
from stream.metrics import Metrics
from stream.settings import Settings
from stream.worker.checkpoint_lock import checkpoint_file
from stream.worker.profile_store import open_profiles

log = logging.getLogger(__name__)


class Acked(Protocol):
    """What a checkpoint waits for. A sink may also have ``start_settle()``: called
    first, to start sending what the checkpoint covers without waiting for it."""

    def settle(self) -> None:
        """Return once everything sent so far is acknowledged (or raise)."""


class Part(Protocol):
    """State of another room that a checkpoint carries beside the learning state, so it
    moves with the same offsets (the experiment results: a restart goes on counting)."""

    name: str

    def dump(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """JSON-able header and arrays (None: nothing to keep)."""

    def load(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Take back what :meth:`dump` gave."""


class Checkpointer:
    """Flush, write, commit (see module doc); due after ``worker.checkpoint_every_events``
    records or ``worker.checkpoint_every_s`` seconds."""

    def __init__(self, settings: Settings, metrics: Metrics,
                 acked: Sequence[Acked] = (), parts: Sequence[Part] = ()) -> None:
        self.settings = settings
        self.metrics = metrics
        self.acked = list(acked)
        self.parts = list(parts)
        self.path = checkpoint_file(settings)  # worker.checkpoint_path, or the group's default
        self.version_path = self.path.with_name(self.path.name + ".published")
        self._last = time.monotonic()
        self._since = 0  # records covered since the last checkpoint
        self._spills = 0  # the profile store's spill count at the last checkpoint

    # -- restore and the published-version record ---------------------------------------

    def restore(self, catalog: Catalog, fmap: FeatureMap | None = None) -> LearningState:
        """The state of the last checkpoint (a fresh one without, in ``fmap``'s feature
        space when given), whose version counter is past every version published since."""
        ck = read_checkpoint(self.path)
        # A disk store when the settings ask for one (emptied: it is filled as partitions
        # are assigned, from their changelog), else None: in memory.
        profiles = open_profiles(self.settings, catalog.embeddings.shape[1])
        if ck is None:
            state = LearningState.fresh(self.settings, catalog, fmap, profiles)
            log.info("no checkpoint: fresh %r", state.policy)
        else:
            state = LearningState.from_checkpoint(self.settings, catalog, ck, profiles)
            log.info("resumed from checkpoint at offsets %s", ck.offsets)
            saved = ck.header.get("parts", {})
            for part in self.parts:
                if part.name in saved:
                    prefix = f"part.{part.name}."
                    part.load(saved[part.name], {k.removeprefix(prefix): v for k, v in
                                                 ck.arrays.items() if k.startswith(prefix)})
        # Versions published after the last checkpoint must not be reused: servers only
        # swap to a newer number, so a reused one would be ignored.
        state.skip_versions_to(self.published_version())
        self.metrics.policy_version.set(state.version)
        return state

    def published_version(self) -> int:
        """The number of the last policy published (0 if none)."""
        try:
            return int(self.version_path.read_text())
        except FileNotFoundError:
            return 0
        except ValueError as exc:
            raise CheckpointError(f"{self.version_path} does not hold a version") from exc

    def record_published(self, version: int) -> None:
        """Record ``version`` durably before its bundle is sent."""
        write_atomic(self.version_path, str(version).encode())

    # -- checkpoints ----------------------------------------------------------------------

    def _profile_metrics(self, profiles) -> None:
        m = self.metrics
        held = len(profiles)
        in_memory = getattr(profiles, "in_memory", held)
        m.profiles_held.labels(where="memory").set(in_memory)
        m.profiles_held.labels(where="disk").set(held - in_memory)
        spills = getattr(profiles, "spills", 0)
        if spills > self._spills:
            m.profile_spills.inc(spills - self._spills)
        self._spills = spills

    def covered(self, records: int) -> None:
        self._since += records

    def due(self, now: float) -> bool:
        w = self.settings.worker
        return (self._since >= w.checkpoint_every_events
                or now - self._last >= w.checkpoint_every_s)

    def age(self, now: float) -> float:
        return now - self._last

    def checkpoint(self, state: LearningState, lock: threading.Lock,
                   commit: Callable[[dict[int, int]], None] | None = None) -> Checkpoint:
        """Send, encode, settle what must be acked, write state + offsets atomically, then
        ``commit`` the offsets written (when given): the module doc's order."""
        t0 = time.perf_counter()
        for sink in self.acked:
            start = getattr(sink, "start_settle", None)
            if start is not None:
                start()
        with lock:
            # A disk store writes the profiles changed since the last checkpoint (a memory
            # store: nothing).
            state.profiles.flush()
            self._profile_metrics(state.profiles)
            # With the statistics exchange, profiles live in their changelog topic.
            ck = state.to_checkpoint(profiles=not self.settings.stats.exchange)
            for part in self.parts:
                got = part.dump()
                if got is not None:
                    ck.header.setdefault("parts", {})[part.name] = got[0]
                    ck.arrays.update({f"part.{part.name}.{k}": v for k, v in got[1].items()})
            data = encode_checkpoint(ck)
        for sink in self.acked:
            sink.settle()
        failpoints.hit("checkpoint.settled")  # crash tests: acked, not yet covered
        write_atomic(self.path, data)
        failpoints.hit("checkpoint.written")  # crash tests: covered, not yet committed
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
        self.metrics.checkpoints.inc()
        self._last = time.monotonic()
        self._since = 0
        if commit is not None:
            commit(ck.offsets)
        return ck
