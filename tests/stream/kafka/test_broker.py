import os
import signal
import subprocess
import sys
import time

import pytest
from kafka import KafkaAdminClient

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
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "broker", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for_kafka(f"127.0.0.1:{port}", timeout_s=30)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"listening on 127.0.0.1:{port}" in out
    assert "broker stopped" in out
