"""Checkpoints: learning state and the Kafka offsets it covers, written together, atomically.

A checkpoint is one ``.npz`` file (numpy arrays only, loaded with
``allow_pickle=False``) holding named byte blobs and arrays plus a JSON header
with the offsets. It is written to a temporary sibling, fsynced, and renamed
over the old one, so a crash at any instant leaves either the previous or the
new checkpoint — never a torn one — and the offsets always describe exactly the
events the state has absorbed.

>>> import tempfile, numpy as np
>>> path = Path(tempfile.mkdtemp()) / "ckpt.npz"
>>> write_checkpoint(path, Checkpoint(offsets={0: 42}, header={"n": 1},
...                                   arrays={"w": np.arange(3.0)}))
>>> ck = read_checkpoint(path)
>>> ck.offsets, ck.header, ck.arrays["w"].tolist()
({0: 42}, {'n': 1}, [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream.exceptions import CheckpointError

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    offsets: dict[int, int]                      # partition -> next offset to consume
    header: dict[str, Any] = field(default_factory=dict)   # JSON-able state
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def write_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    write_atomic(path, encode_checkpoint(checkpoint))


def encode_checkpoint(checkpoint: Checkpoint) -> memoryview:
    """The bytes :func:`write_checkpoint` writes (a writer can encode while it waits for
    what the checkpoint depends on, then write)."""
    meta = {"format": FORMAT_VERSION,
            "offsets": {str(p): o for p, o in checkpoint.offsets.items()},
            "header": checkpoint.header}
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
             **checkpoint.arrays)
    return buf.getbuffer()


def write_atomic(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Replace ``path`` with ``data``: temporary sibling, fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none yet."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(arrays.pop("__meta__").tobytes())
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format {meta.get('format')}, expected {FORMAT_VERSION}")
    return Checkpoint(offsets={int(p): int(o) for p, o in meta["offsets"].items()},
                      header=meta["header"], arrays=arrays)
