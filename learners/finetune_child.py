"""One fine-tune in a child process: files in, files out, nothing pickled.

Why a process: a fine-tune in a thread of the learner shares its GIL and, on a small
CPU box, had to be throttled to a 10 % duty cycle; a run could then take longer than
the stream took to move on. A child has its own interpreter, runs at a lower OS
priority (``os.nice``) instead of sleeping, and on CUDA at full speed.

The parent writes a job directory::

    job.json              format, feature dim, device, torch threads, the TrainSpec
    rows.npz              the snapshot: item_emb, profiles, gender, age, rewards
    adapter.safetensors   the live adapter's weights

and starts ``python -c BOOTSTRAP NICE DIR``: the child lowers its priority before it
imports torch (that import is seconds of CPU), trains, and writes::

    adapter_out.safetensors   the trained adapter
    refit.npz                 X: the snapshot's rows in the new space
    result.json               losses, steps, seconds, device, its pid (written last,
                              by rename: its presence means the others are complete)

The refit rows are computed here, not in the parent: φ of 20,000 rows costs the
parent's thread 0.26-0.55 s, loading them from ``refit.npz`` 13-33 ms (measured on
the 2-core test box). The child's stdin is a pipe from the parent that nobody
writes; when it closes (the parent exited or was killed) the child removes the
directory and exits, so no child outlives its parent.

>>> sorted(TrainSpec().to_dict())[:3]
['batch_size', 'eval_rows', 'head_iters']
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from learners.adapter import Adapter
from learners.device import resolve_device
from learners.exceptions import FineTuneError
from learners.features import FeatureMap
from learners.refit import rows_in_space
from learners.replay import ReplayRows
from learners.training import TrainOutcome, TrainSpec, train_adapter

JOB_FORMAT = "fairstream-finetune-job-v1"
RESULT_FORMAT = "fairstream-finetune-result-v1"
ROW_FIELDS = ("item_emb", "profiles", "gender", "age", "rewards")
EXIT_ORPHANED = 75  # the parent went away; nothing was written

# The child's entry: priority first, then the imports (torch's is the costly part).
BOOTSTRAP = ("import os, sys; os.nice(int(sys.argv[1])); "
             "from learners.finetune_child import entry; entry(sys.argv[2:])")


@dataclass(frozen=True)
class ChildResult:
    """What a child wrote back, read and checked by the parent."""

    outcome: TrainOutcome  # the trained adapter, losses, steps, seconds
    X: np.ndarray  # the snapshot's rows in the new space
    device: str
    pid: int
    nice: int  # the child's niceness while it trained


def write_job(job_dir: Path, rows: ReplayRows, adapter_bytes: bytes, dim: int, spec: TrainSpec,
              device: str, threads: int) -> None:
    """Write a job for :func:`launch` into the (existing, empty) ``job_dir``."""
    np.savez(job_dir / "rows.npz", **{k: getattr(rows, k) for k in ROW_FIELDS})
    (job_dir / "adapter.safetensors").write_bytes(adapter_bytes)
    job = {"format": JOB_FORMAT, "dim": int(dim), "device": device, "threads": int(threads),
           "spec": spec.to_dict()}
    (job_dir / "job.json").write_text(json.dumps(job))


def launch(job_dir: Path, nice: int, threads: int) -> subprocess.Popen:
    """Start the child on ``job_dir``; raises OSError when no process can be started."""
    env = dict(os.environ)
    # The child imports the same ``learners`` as this process, wherever that lives.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)  # numpy's BLAS too, not only torch's pool
    with open(job_dir / "child.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, str(int(nice)), str(job_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log, env=env)


def failure(job_dir: Path, returncode: int) -> FineTuneError:
    """The error for a child that exited without a result: its code and last log line."""
    try:
        lines = (job_dir / "child.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    last = lines[-1] if lines else "no output"
    return FineTuneError(f"fine-tune process exited with code {returncode}: {last}")


def read_result(job_dir: Path, rows: int, dim: int, like: Adapter) -> ChildResult:
    """Read and check what the child wrote (an adapter shaped as ``like``, ``rows`` × ``dim``
    finite refit rows, numbers where numbers belong); anything missing or malformed is a
    :class:`FineTuneError` (never adopted, never a crash of the caller)."""
    try:
        info = json.loads((job_dir / "result.json").read_text())
        if not isinstance(info, dict) or info.get("format") != RESULT_FORMAT:
            raise ValueError("not a fine-tune result")
        losses = (info["loss_before"], info["loss_after"], info["train_seconds"])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in losses):
            raise ValueError(f"losses and seconds must be numbers, got {losses}")
        steps, pid, device, nice = info["steps"], info["pid"], info["device"], info["nice"]
        if not (isinstance(steps, int) and steps >= 0 and isinstance(pid, int)
                and isinstance(nice, int) and isinstance(device, str)):
            raise ValueError("steps, pid, nice or device malformed")
        adapter = Adapter.from_bytes((job_dir / "adapter_out.safetensors").read_bytes())
        shape = (adapter.in_dim, adapter.out_dim, adapter.hidden)
        if shape != (like.in_dim, like.out_dim, like.hidden):
            raise ValueError(f"adapter shape {shape} is not the input's")
        with np.load(job_dir / "refit.npz", allow_pickle=False) as npz:
            X = npz["X"]
        if X.dtype != np.float64 or X.shape != (rows, dim):
            raise ValueError(f"refit rows are {X.dtype} {X.shape}, expected float64 {(rows, dim)}")
        if not np.isfinite(X).all():
            raise ValueError("refit rows are not all finite")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError,
            zipfile.BadZipFile, SafetensorError) as exc:
        raise FineTuneError(f"fine-tune result unreadable: {exc!r}") from exc
    outcome = TrainOutcome(adapter=adapter, loss_before=float(losses[0]),
                           loss_after=float(losses[1]), steps=steps,
                           train_seconds=float(losses[2]))
    return ChildResult(outcome=outcome, X=X, device=device, pid=pid, nice=nice)


class ChildRun:
    """The parent's handle on one child: its job written, the process started, its deadline.

    ``close(kill=True)`` kills and reaps it; ``close()`` after it exited just reaps it.
    Either way its stdin pipe is closed and the job directory removed.
    """

    def __init__(self, rows: ReplayRows, adapter: Adapter, dim: int, spec: TrainSpec,
                 device: str, threads: int, nice: int, max_seconds: float | None) -> None:
        self.rows, self.dim, self.like = len(rows), int(dim), adapter
        self.started = time.monotonic()
        self.deadline = None if max_seconds is None else self.started + max_seconds
        self.dir = Path(tempfile.mkdtemp(prefix="fairstream-finetune-"))
        try:
            write_job(self.dir, rows, adapter.to_bytes(), dim, spec, device, threads)
            self.proc = launch(self.dir, nice, threads)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def overdue(self) -> bool:
        """Still running at its deadline."""
        return (self.deadline is not None and time.monotonic() >= self.deadline
                and self.alive())

    def join(self, timeout: float | None = None) -> None:
        """Wait for the child to exit, at most ``timeout`` s and never past the deadline."""
        if self.deadline is not None:
            left = max(0.0, self.deadline - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)

    def result(self) -> ChildResult:
        """What the exited child wrote; FineTuneError if it failed or wrote nonsense."""
        if self.proc.returncode != 0:
            raise failure(self.dir, self.proc.returncode)
        return read_result(self.dir, self.rows, self.dim, self.like)

    def close(self, kill: bool = False) -> None:
        if kill and self.alive():
            self.proc.kill()
        self.proc.wait()
        with suppress(OSError):
            self.proc.stdin.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the child ------------------------------------------------------------------------------


def _exit_with_parent(job_dir: Path) -> None:
    """Exit (and remove the job) as soon as stdin closes: the parent is gone."""

    def watch() -> None:
        # The raw fd, not sys.stdin: a daemon thread blocked inside a buffered reader
        # holds its lock, and interpreter shutdown then aborts the process.
        with suppress(OSError):
            while os.read(0, 4096):
                pass
        shutil.rmtree(job_dir, ignore_errors=True)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _write_atomic(path: Path, data: bytes) -> None:
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    os.replace(part, path)


def entry(argv: list[str]) -> None:
    """The child's whole life: :func:`main`, a traceback on failure, then ``os._exit``
    (no interpreter shutdown while the watcher thread still blocks on stdin)."""
    code = 1
    try:
        code = main(argv)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str]) -> int:
    job_dir = Path(argv[0])
    _exit_with_parent(job_dir)
    job = json.loads((job_dir / "job.json").read_text())
    if job.get("format") != JOB_FORMAT:
        raise FineTuneError(f"not a fine-tune job: {job.get('format')!r}")
    torch.set_num_threads(int(job["threads"]))
    with np.load(job_dir / "rows.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in ROW_FIELDS}
    rows = ReplayRows(**arrays, seq=np.arange(len(arrays["rewards"]), dtype=np.int64))
    adapter = Adapter.from_bytes((job_dir / "adapter.safetensors").read_bytes())
    dim, device = int(job["dim"]), resolve_device(job["device"])
    outcome = train_adapter(rows, adapter, dim, TrainSpec.from_dict(job["spec"]), device)
    X = rows_in_space(FeatureMap(outcome.adapter, dim=dim), rows)
    (job_dir / "adapter_out.safetensors").write_bytes(outcome.adapter.to_bytes())
    np.savez(job_dir / "refit.npz", X=X)
    result = {"format": RESULT_FORMAT, "loss_before": outcome.loss_before,
              "loss_after": outcome.loss_after, "steps": outcome.steps,
              "train_seconds": outcome.train_seconds, "device": device.type,
              "pid": os.getpid(), "nice": os.nice(0), "finished_at": time.time()}
    _write_atomic(job_dir / "result.json", json.dumps(result).encode())
    return 0
