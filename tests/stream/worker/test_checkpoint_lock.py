"""One worker per checkpoint: a per-group default path under the data directory, and a lock
that refuses a second worker (and dies with the first)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from stream.settings import Settings
from stream.worker.checkpoint_lock import CheckpointInUse, CheckpointLock, checkpoint_file


def test_the_default_checkpoint_is_per_group_under_the_data_directory(tmp_path):
    s = Settings().replace(data={"cache_dir": str(tmp_path)})
    assert checkpoint_file(s) == tmp_path / "worker" / "fairstream-workers" / "checkpoint.npz"
    other = s.replace(kafka={"group_id": "shadow"})
    assert checkpoint_file(other).parent.name == "shadow" != checkpoint_file(s).parent.name
    mine = s.replace(worker={"checkpoint_path": "elsewhere/ck.npz"})
    assert str(checkpoint_file(mine)) == "elsewhere/ck.npz"


def test_a_second_holder_is_refused_until_the_first_lets_go(tmp_path):
    path = tmp_path / "ck.npz"
    with CheckpointLock(path), pytest.raises(CheckpointInUse,
                                             match=rf"pid {os.getpid()}\b.*checkpoint_path"):
        CheckpointLock(path).acquire()
    with CheckpointLock(path) as again:
        assert again.lock_path.read_text().strip() == str(os.getpid())


def test_the_lock_of_a_killed_worker_is_free_at_once(tmp_path):
    path = tmp_path / "ck.npz"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from stream.worker.checkpoint_lock import CheckpointLock\n"
        f"held = CheckpointLock({str(path)!r}).acquire()\n"
        "print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointInUse, match=f"pid {holder.pid}"):
            CheckpointLock(path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    CheckpointLock(path).acquire().release()


@pytest.mark.broker
def test_fairstream_worker_refuses_a_checkpoint_in_use_with_one_line(broker, tmp_path):
    env = {**os.environ, "FAIRSTREAM_DATA__CACHE_DIR": str(tmp_path),
           "FAIRSTREAM_KAFKA__GROUP_ID": "lock-test", "FAIRSTREAM_WORKER__METRICS_PORT": "0",
           # a key of its own: the built-in one is refused before the lock is looked at
           "FAIRSTREAM_POLICY__SIGNING_KEY": "checkpoint-lock-test-key",
           # A device the worker cannot have: had it built its model before taking the
           # lock, it would stop with "no CUDA device" instead (the order, not a clock).
           "FAIRSTREAM_MODEL__DEVICE": "cuda"}
    expected = tmp_path / "worker" / "lock-test" / "checkpoint.npz"
    with CheckpointLock(expected):
        done = subprocess.run([sys.executable, "-m", "stream.cli", "worker", "--bootstrap",
                               broker.bootstrap], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("fairstream: error: ") and "Traceback" not in done.stderr
    assert f"checkpoint {expected} is in use by another worker (pid {os.getpid()}" in line
