"""The worker's part in erasure: follow ``fairstream.erasure`` and forget.

:class:`Forgetting` keeps every marker (:class:`~stream.core.erasure.Erasures`) and
makes the state forget in three places:

* at start, after the checkpoint is restored (:meth:`catch_up`): every marker on the
  topic, so an older checkpoint loses what was erased after it was written;
* after a partition's profiles are restored from their changelog (:meth:`reapply`,
  with the statistics exchange), so an erased user's profile never comes back;
* between polls (:meth:`poll`): new markers drop profiles and open impressions at once;
* on the way in (:meth:`observed`, :meth:`screen`): an impression of an erased user
  that predates the erasure (a replay from an older checkpoint) is dropped from the
  join as soon as it is observed, and never learnt.

When a pass drops anything the caller checkpoints at once, so the file on disk stops
holding the user without waiting for the next scheduled checkpoint.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from stream.core.erasure import Erasures, Forgotten
from stream.core.join import Pending
from stream.core.state import LearningState
from stream.events import Feedback, Shown
from stream.kafka.erasure import ErasureFeed
from stream.settings import Settings

log = logging.getLogger(__name__)


class Forgetting:
    """Erasure markers in, forgotten users out (see module doc)."""

    def __init__(self, settings: Settings) -> None:
        self.erasures = Erasures()
        self.feed = ErasureFeed(settings, client="worker-erasure")

    def __repr__(self) -> str:
        return f"Forgetting({self.erasures!r})"

    def open(self) -> Forgetting:
        self.feed.open()
        return self

    def close(self) -> None:
        self.feed.close()

    def _apply(self, markers: list[tuple[str, float]], state: LearningState) -> Forgotten:
        new = sum([self.erasures.add(t, at) for t, at in markers])
        if not new:
            return Forgotten()
        out = self.erasures.forget(state.profiles, state.joiner)
        out.markers = new
        if out:
            log.info("erasure: dropped %d profile(s) and %d open impression(s)",
                     out.profiles, out.open_impressions)
        return out

    def catch_up(self, state: LearningState) -> Forgotten:
        """Read every marker so far and forget what ``state`` (just restored) holds."""
        return self._apply(self.feed.load(), state)

    def reapply(self, state: LearningState, lock: threading.Lock) -> Forgotten:
        """Forget again what ``state`` holds of erased users: after profiles came back
        from elsewhere (a partition's changelog and deltas, docs/scaling.md)."""
        with lock:
            out = self.erasures.forget(state.profiles, state.joiner)
        if out:
            log.info("erasure after a restore: dropped %d profile(s) and %d open "
                     "impression(s)", out.profiles, out.open_impressions)
        return out

    def poll(self, state: LearningState, lock: threading.Lock) -> Forgotten:
        """Apply the markers that arrived since the last call."""
        markers = self.feed.poll()
        if not markers:
            return Forgotten()
        with lock:
            return self._apply(markers, state)

    def observed(self, state: LearningState, events: Sequence[Shown | Feedback]) -> int:
        """After a chunk went into the join: drop the open impressions it added for erased
        users (events that predate their erasure). Costs a hash per impression, and only
        while there are erasures at all."""
        blocks = self.erasures.blocks
        if not len(self.erasures) or not any(
                type(e) is Shown and blocks(e.user_id, e.ts) for e in events):
            return 0
        return state.joiner.drop_if(lambda p: blocks(p.user_id, p.ts))

    def screen(self, closed: list[Pending]) -> list[Pending]:
        """Closed impressions without those of erased users (nothing of them is learnt)."""
        return self.erasures.screen(closed)
