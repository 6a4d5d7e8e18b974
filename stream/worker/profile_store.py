"""Which profile store a worker learns with, and where a disk store's files live.

With the statistics exchange a worker's profiles are those of the partitions it owns,
restored from ``fairstream.profiles`` when it takes one (docs/scaling.md). They can be
held in memory (:class:`learners.ProfileStore`) or, by default, in an embedded store on
disk with the ``features.profile_capacity`` most recent in memory
(:class:`learners.DiskProfileStore`, ``features.profile_store``). The disk store is a
cache of the changelog: a worker empties it when it starts and restores its partitions
into it as they are assigned, exactly as into memory, so a crashed process's files (which
may hold profiles newer than its checkpoint) are never read. Its directory is
``features.profile_dir``, by default beside the checkpoint (``<checkpoint>.profiles``),
whose lock keeps a second worker out of it (RocksDB also locks its directory).

>>> from stream.settings import Settings
>>> s = Settings().replace(worker={"checkpoint_path": "/data/w1/checkpoint.npz"})
>>> str(profile_dir(s))
'/data/w1/checkpoint.npz.profiles'
"""

from __future__ import annotations

import logging
from pathlib import Path

from learners import DiskProfileStore, ProfileStore
from stream.settings import Settings
from stream.worker.checkpoint_lock import checkpoint_file

log = logging.getLogger(__name__)


def profile_dir(settings: Settings) -> Path:
    """``features.profile_dir``, or ``<checkpoint file>.profiles``."""
    if settings.features.profile_dir:
        return Path(settings.features.profile_dir)
    path = checkpoint_file(settings)
    return path.with_name(path.name + ".profiles")


def open_profiles(settings: Settings, emb_dim: int) -> ProfileStore | None:
    """The disk store the settings ask for, emptied; None for the memory store (the
    learning state makes its own, or restores it from the checkpoint)."""
    feat = settings.features
    backend = feat.store(settings.stats.exchange)
    if backend == "memory":
        return None
    path = profile_dir(settings)
    store = DiskProfileStore(path, emb_dim=emb_dim, decay=feat.profile_decay,
                             capacity=feat.profile_capacity, backend=backend, fresh=True)
    log.info("profiles: %s at %s, %d in memory, the rest on disk", backend, path,
             feat.profile_capacity)
    return store
