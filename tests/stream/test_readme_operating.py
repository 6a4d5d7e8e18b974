"""The README's "Operating it" by-hand sequence, run command by command as written, on the
session broker (its own topics, group, ports and checkpoint), with what each one prints."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from stream.kafka.broker import free_port

pytestmark = [pytest.mark.broker, pytest.mark.model]

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def by_hand() -> tuple[list[str], dict[str, str]]:
    """The sequence's commands, and the variables its ``export … $(openssl rand -hex 32)``
    lines set: each to a 64-hex-digit key as the shell would, but a fixed one, because
    the pseudonyms decide each user's partition and so which impressions close."""
    section = README.split("## Operating it\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S).group(1)
    keys = {m.group(1): hashlib.sha256(m.group(1).encode()).hexdigest() for m in re.finditer(
        r"^export (\w+)=\$\(openssl rand -hex 32\)", block, flags=re.M)}
    return [line.split("#", 1)[0].strip() for line in block.splitlines()
            if line.startswith("fairstream ")], keys


def test_the_readme_sequence_runs_as_written(broker, data_cache, tmp_path):
    commands, keys = by_hand()
    assert set(keys) == {"FAIRSTREAM_POLICY__SIGNING_KEY", "FAIRSTREAM_PRIVACY__PSEUDONYM_KEY"}
    assert commands[0] == "fairstream broker &" and commands[-1] == "fairstream serve &"
    port = free_port()
    env = {**os.environ, "FAIRSTREAM_KAFKA__BOOTSTRAP": broker.bootstrap,
           "FAIRSTREAM_TOPICS__PREFIX": "readme", "FAIRSTREAM_KAFKA__GROUP_ID": "readme",
           "FAIRSTREAM_DATA__CACHE_DIR": data_cache,
           "FAIRSTREAM_WORKER__CHECKPOINT_PATH": str(tmp_path / "checkpoint.npz"),
           "FAIRSTREAM_WORKER__METRICS_PORT": "0", "FAIRSTREAM_WORKER__LOG_EVERY_S": "2",
           "FAIRSTREAM_SERVE__PORT": str(port), **keys}
    outputs = {}
    for command in commands[1:-1]:  # the session's broker stands in for the first line
        args = shlex.split(command)[1:]
        done = subprocess.run([sys.executable, "-m", "stream.cli", *args], env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        outputs[" ".join(args[:2])] = done
    assert "published 1682 items" in outputs["produce catalog"].stdout
    assert "31195/31195" in outputs["produce replay"].stderr  # the bar has its total
    worker = outputs["worker --exit-when-idle"]
    assert '"rows_learned": 19454' in worker.stdout
    assert "progress:" in worker.stderr and f"checkpoint {tmp_path}" in worker.stderr
    assert "verified:" in outputs["policy show"].stdout
    assert outputs["dlq tail"].stdout.strip() == "no dead letters on readme.events.dlq"

    serve = subprocess.Popen([sys.executable, "-m", "stream.cli", "serve"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert serve.stdout.readline().startswith(f"fairstream: serving on http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while not httpx.get(f"http://127.0.0.1:{port}/readyz").json()["ready"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/recommend",
                       json={"user_id": "u7", "candidates": ["1", "2", "3"], "k": 1,
                             "explain": True})
        assert r.status_code == 200 and r.json()["explanations"][0]["item_has_own_terms"]
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0
