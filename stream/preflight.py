"""Checks a command makes before it starts: is Kafka reachable, is the port free.

kafka-python retries an unreachable bootstrap for about 30 s, logging an ERROR
line each time, and then raises a traceback; a port taken by another process
surfaces as ``OSError: [Errno 98]`` from deep inside a server. Checked first,
each becomes one error that names the setting to change.

>>> import socket
>>> with socket.socket() as s:
...     s.bind(("127.0.0.1", 0)); s.listen()
...     port = s.getsockname()[1]
...     try:
...         check_port_free("127.0.0.1", port, "serve.port")
...     except PortInUse as exc:
...         print(str(exc).split(":")[0])
port 127.0.0.1
"""

from __future__ import annotations

import errno
import socket
import time

from stream.exceptions import FairstreamError
from stream.settings import ENV_PREFIX

#: How long a command waits for the bootstrap before it gives up (seconds, per attempt).
KAFKA_TIMEOUT_S = 5.0


class KafkaUnreachable(FairstreamError):
    """No bootstrap server of ``kafka.bootstrap`` accepted a connection in time."""


class PortInUse(FairstreamError):
    """A port a command must listen on is taken by another process."""


def env_name(key: str) -> str:
    """``bandit.alpha`` → ``FAIRSTREAM_BANDIT__ALPHA``.

    >>> env_name("worker.metrics_port")
    'FAIRSTREAM_WORKER__METRICS_PORT'
    """
    section, _, name = key.partition(".")
    return f"{ENV_PREFIX}{section.upper()}__{name.upper()}"


def bootstrap_servers(bootstrap: str) -> list[tuple[str, int]]:
    """``"a:9092,b:9093"`` → ``[("a", 9092), ("b", 9093)]``; ValueError naming a bad entry.

    >>> bootstrap_servers("kafka:9092, [::1]:9093")
    [('kafka', 9092), ('::1', 9093)]
    """
    out = []
    for entry in (e.strip() for e in bootstrap.split(",")):
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{entry!r} is not host:port with a port in 1..65535")
        out.append((host.strip("[]"), int(port)))
    return out


def check_kafka(bootstrap: str, timeout_s: float = KAFKA_TIMEOUT_S) -> None:
    """Return once one bootstrap server accepts a TCP connection; raise
    :class:`KafkaUnreachable` after ``timeout_s`` of refusals and timeouts."""
    servers = bootstrap_servers(bootstrap)
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        for host, port in servers:
            left = max(0.1, deadline - time.monotonic())
            try:
                with socket.create_connection((host, port), timeout=min(left, 2.0)):
                    return
            except OSError as exc:
                last = f"{host}:{port}: {exc.strerror or exc}"
        if time.monotonic() >= deadline:
            raise KafkaUnreachable(
                f"cannot reach Kafka at {bootstrap} within {timeout_s:g} s ({last}); start "
                f"a broker (fairstream broker) or point kafka.bootstrap at one "
                f"(--bootstrap or {env_name('kafka.bootstrap')})")
        time.sleep(0.2)


def check_port_free(host: str, port: int, setting: str) -> None:
    """Raise :class:`PortInUse` if ``host:port`` cannot be listened on (0: any port, fine);
    ``setting`` is what sets the port: a settings key or a command-line flag."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            how = (f"{setting} or {env_name(setting)}; 0 = any free port" if "." in setting
                   else setting)
            raise PortInUse(f"port {host}:{port} ({setting}) is already in use by another "
                            f"process; stop it, or choose another port ({how})") from None
