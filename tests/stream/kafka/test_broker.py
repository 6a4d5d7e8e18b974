import os
import signal
import subprocess
import sys

import pytest
from kafka import KafkaAdminClient

from stream.exceptions import BrokerError
from stream.kafka.broker import free_port, wait_for_kafka
from stream.kafka.topics import ensure_topics

pytestmark = pytest.mark.broker


def test_topics_are_created_once(make_settings):
    settings = make_settings()
    assert sorted(ensure_topics(settings)) == sorted(settings.topics.all())
    assert ensure_topics(settings) == []
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(
            [settings.topics.events, settings.topics.items])}
    finally:
        admin.close()
    assert described == {settings.topics.events: 2, settings.topics.items: 1}


def test_broker_command_serves_kafka_and_stops_cleanly_on_sigterm():
    """The signal goes once the command says it listens (its own readiness check done),
    not after a pause: the broker answering our probe does not mean the command's own
    probe has answered yet (that race once left it waiting on a broker already gone)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "broker", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        for line in proc.stdout:  # ends at EOF if the command dies first
            lines.append(line)
            if "listening on" in line:
                break
        wait_for_kafka(f"127.0.0.1:{port}", timeout_s=30)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + out
    assert proc.returncode == 0, out
    assert f"listening on 127.0.0.1:{port}" in out
    assert "fairstream: broker stopped\n" in out


def test_waiting_for_a_broker_ends_when_its_process_has_exited():
    """A broker that exits while the command waits for it to answer (a SIGTERM during
    start) ends the wait at once, instead of probing a dead port until the timeout."""
    with pytest.raises(BrokerError, match="exited before it answered"):
        wait_for_kafka(f"127.0.0.1:{free_port()}", timeout_s=600, alive=lambda: False)
