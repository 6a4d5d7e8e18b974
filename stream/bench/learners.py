"""Benchmark of the representation layer: embedding, fine-tune, consumer stall."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from learners.adapter import Adapter
from learners.device import resolve_device
from learners.encoder import Encoder
from learners.features import FeatureMap
from learners.finetune import FineTuner
from learners.replay import ReplayBuffer

_WORDS = (
    "star", "space", "love", "war", "night", "city", "river", "dark", "summer", "last",
    "secret", "return", "king", "lost", "house", "blue", "road", "dead", "little", "man",
    "woman", "girl", "boy", "heart", "fire", "ghost", "story", "time",
)
_GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)


def _synthetic_titles(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 5))))
        genres = " ".join(rng.choice(_GENRES, size=int(rng.integers(1, 4)), replace=False))
        out.append(f"{words.title()} #{i} ({int(rng.integers(1930, 2025))}) {genres}")
    return out


class RidgeUpdater:
    """Minimal ridge bandit for the consumer loop: rank-1 Sherman–Morrison updates.

    ``A⁻¹ ← A⁻¹ - (A⁻¹φ)(A⁻¹φ)ᵀ / (1 + φᵀA⁻¹φ)``, ``b ← b + rφ``, ``θ = A⁻¹b``.
    """

    def __init__(self, dim: int, lam: float = 1.0) -> None:
        self.a_inv = np.eye(dim) / lam
        self.b = np.zeros(dim)
        self.theta = np.zeros(dim)

    def score(self, X: np.ndarray) -> np.ndarray:
        return X @ self.theta

    def update(self, x: np.ndarray, reward: float) -> None:
        v = self.a_inv @ x
        self.a_inv -= np.outer(v, v) / (1.0 + x @ v)
        self.b += reward * x
        self.theta = self.a_inv @ self.b


def _consumer_loop(
    seconds: float,
    fmap: FeatureMap,
    emb: np.ndarray,
    profiles: np.ndarray,
    true_w: np.ndarray,
    rng: np.random.Generator,
    n_candidates: int,
    update: Callable[[np.ndarray, float], None] | None,
) -> int:
    """Events processed in ``seconds``: φ for the candidates, score, pick, rank-1 update."""
    ridge = RidgeUpdater(fmap.dim)
    apply = update or ridge.update
    attrs = ({"gender": "F", "age": 24}, {"gender": "M", "age": 40}, {"age": 60})
    n_items, n_users = emb.shape[0], profiles.shape[0]
    events = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(16):
            u = int(rng.integers(n_users))
            cand = rng.integers(0, n_items, size=n_candidates)
            X = fmap.transform(emb[cand], profiles[u], attrs[u % 3])
            best = int(np.argmax(ridge.score(X)))
            reward = float(emb[cand[best]] @ true_w > 0)
            apply(X[best], reward)
            events += 1
    return events


def run_learners_bench(
    n_items: int = 2000,
    device: str = "auto",
    progress: bool = True,
    *,
    dim: int = 64,
    consumer_seconds: float = 3.0,
    n_candidates: int = 20,
    finetune_steps: int = 200,
    batch_size: int = 256,
    cache_dir: Path | str | None = None,
    update: Callable[[np.ndarray, float], None] | None = None,
    encoder: Encoder | None = None,
    duty_cycle: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure embedding, fine-tune and consumer-stall numbers; returns a flat dict.

    Keys: ``embed_items_per_s_cold`` (model loaded, empty cache),
    ``embed_items_per_s_cached`` (a fresh Encoder on the same cache dir),
    ``finetune_samples_per_s``, ``finetune_steps_per_s``,
    ``consumer_throughput_loss_pct`` (events/s of an in-process consumer —
    φ for ``n_candidates`` items, score, rank-1 ridge ``update`` — while a
    fine-tune runs in the background, vs. without one, same run),
    ``device``, plus supporting numbers (``phi_us_per_call``,
    ``consumer_events_per_s_idle`` / ``_during_finetune``, ``model_load_s``).
    """
    dev = resolve_device(device)

    def say(msg: str) -> None:
        if progress:
            print(f"[bench learners] {msg}", file=sys.stderr, flush=True)

    rng = np.random.default_rng(seed)
    texts = _synthetic_titles(n_items, seed)
    with tempfile.TemporaryDirectory(prefix="fairstream-bench-") as tmp:
        root = Path(cache_dir) if cache_dir is not None else Path(tmp)
        enc = (Encoder(cache_dir=root, device=dev.type) if encoder is None
               else encoder.with_cache_dir(root))
        t0 = time.perf_counter()
        enc.embed([f"warm-up {seed} {time.time_ns()}"])  # loads the model, uncached text
        load_s = time.perf_counter() - t0
        say(f"model loaded in {load_s:.1f}s on {dev.type}; embedding {n_items} items")
        t0 = time.perf_counter()
        before = enc.texts_encoded
        emb = enc.embed(texts)
        cold_s = time.perf_counter() - t0
        cold_n = enc.texts_encoded - before
        enc2 = enc.with_cache_dir(root)
        enc2._model = None  # a fresh worker: it must not need the model at all
        t0 = time.perf_counter()
        emb2 = enc2.embed(texts)
        cached_s = time.perf_counter() - t0
        if enc2.texts_encoded != 0 or not np.array_equal(emb, emb2):
            raise RuntimeError("cached embeddings differ from the cold ones")
    say(f"cold {n_items / cold_s:.0f} items/s, cached {n_items / cached_s:.0f} items/s")

    fmap = FeatureMap(Adapter.from_pca(emb, out_dim=FeatureMap.adapter_dim(dim), seed=seed), dim)
    true_w = rng.normal(size=emb.shape[1])
    n_users = 64
    profiles = emb[rng.integers(0, n_items, size=(n_users, 5))].mean(axis=1)
    buffer = ReplayBuffer(capacity=20_000, seed=seed, emb_dim=emb.shape[1])
    attrs = ({"gender": "F", "age": 24}, {"gender": "M", "age": 40}, {"age": 60})
    for _ in range(min(20_000, 10 * n_items)):
        u, j = int(rng.integers(n_users)), int(rng.integers(n_items))
        buffer.add(emb[j], profiles[u], attrs[u % 3], float(emb[j] @ true_w > 0))

    x = fmap.transform(emb[:n_candidates], profiles[0], attrs[0])
    reps = 2000
    t0 = time.perf_counter()
    for _ in range(reps):
        fmap.transform(emb[:n_candidates], profiles[0], attrs[0])
    phi_us = (time.perf_counter() - t0) / reps * 1e6
    assert x.shape == (n_candidates, dim)

    # Raw device speed: unthrottled (the consumer is idle meanwhile).
    tuner = FineTuner(steps=finetune_steps, batch_size=batch_size, device=dev.type,
                      every_events=None, seed=seed, compute_refit=False, duty_cycle=1.0)
    tuner.start(buffer, fmap)
    ft = tuner.wait()
    say(f"fine-tune {ft.samples_per_s:.0f} samples/s, {ft.steps_per_s:.1f} steps/s; "
        f"loss {ft.loss_before:.4f} -> {ft.loss_after:.4f}")

    # Consumer throughput idle / with a background fine-tune / idle again (drift-robust).
    idle1 = _consumer_loop(consumer_seconds, fmap, emb, profiles, true_w, rng, n_candidates, update)
    long_tuner = FineTuner(steps=10**9, batch_size=batch_size, device=dev.type,
                           every_events=None, seed=seed, compute_refit=False,
                           duty_cycle=duty_cycle, max_seconds=None)
    long_tuner.start(buffer, fmap)
    # No wait for training to begin: a child's start-up (its imports) competes with the
    # consumer too, and is part of what each run costs it.
    busy = _consumer_loop(consumer_seconds, fmap, emb, profiles, true_w, rng, n_candidates, update)
    long_tuner.cancel()  # a background run that is cancelled hands back nothing
    long_tuner.wait()
    idle2 = _consumer_loop(consumer_seconds, fmap, emb, profiles, true_w, rng, n_candidates, update)
    idle = (idle1 + idle2) / 2
    loss_pct = 100.0 * (1.0 - busy / idle) if idle else 0.0
    say(f"consumer {idle / consumer_seconds:.0f} ev/s idle, {busy / consumer_seconds:.0f} ev/s "
        f"during fine-tune ({loss_pct:.1f}% loss; trained in a {long_tuner.background})")

    return {
        "embed_items_per_s_cold": n_items / cold_s if cold_n else float("nan"),
        "embed_items_per_s_cached": n_items / cached_s,
        "finetune_samples_per_s": ft.samples_per_s,
        "finetune_steps_per_s": ft.steps_per_s,
        "consumer_throughput_loss_pct": loss_pct,
        "device": dev.type,
        "n_items": n_items,
        "dim": dim,
        "model_load_s": load_s,
        "phi_us_per_call": phi_us,
        "consumer_events_per_s_idle": idle / consumer_seconds,
        "consumer_events_per_s_during_finetune": busy / consumer_seconds,
        "finetune_background": long_tuner.background,
        "finetune_loss_before": ft.loss_before,
        "finetune_loss_after": ft.loss_after,
        "finetune_duty_cycle": long_tuner.duty_cycle,
    }
