"""A real Prometheus server for tests, and the PromQL the deploy files hold.

:class:`PrometheusServer` writes a config into a temporary directory, starts the
``prometheus`` binary on a free 127.0.0.1 port, waits for ``/-/ready`` and
answers instant queries through the HTTP API (``urllib``; no extra dependency)::

    with PrometheusServer(["127.0.0.1:9100"], rule_files=RULE_FILES) as prom:
        prom.wait_for("up", lambda s: s and s[0].value == 1)
        rate = prom.query("job:fairstream_events_consumed:rate1m")

The binary comes from Debian's ``prometheus`` package; ``deploy/scripts/
ensure-prometheus.sh`` installs it. :func:`require_binary` turns its absence into a
skip on a developer's machine and a failure in CI (``CI`` set), so CI never
passes by skipping.

:func:`dashboard_queries` lists every panel's PromQL in the Grafana dashboard and
:func:`rule_expressions` every rule's, so tests can check or evaluate them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
RULE_FILES: tuple[Path, ...] = tuple(sorted(RULES_DIR.glob("*.yml")))
RULE_TESTS: tuple[Path, ...] = tuple(sorted((DEPLOY / "prometheus" / "tests").glob("*.yml")))
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "fairstream.json"
ENSURE_SCRIPT = "deploy/scripts/ensure-prometheus.sh"

# Grafana macros a panel may use; replaced so the PromQL runs on plain Prometheus.
_GRAFANA_MACROS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
}


class PrometheusError(RuntimeError):
    """Prometheus failed to start, or answered a query with an error."""


@dataclass(frozen=True)
class Sample:
    """One element of an instant-query result."""

    labels: dict[str, str]
    value: float


def require_binary(name: str = "prometheus") -> str:
    """Path of ``name`` (prometheus or promtool); skip, or fail in CI, when absent."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"`{name}` not found on PATH: run {ENSURE_SCRIPT} (installs Debian's prometheus package)"
    if os.environ.get("CI"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)
    raise AssertionError("unreachable")  # pragma: no cover


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config_yaml(
    targets: Sequence[str], rule_files: Sequence[Path], scrape_interval: str, job: str
) -> str:
    # JSON is valid YAML, so no YAML library is needed to write the config.
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]},
        ],
    }
    return json.dumps(config, indent=2)


class PrometheusServer:
    """A ``prometheus`` subprocess scraping ``targets`` (``host:port``), for tests.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    Samples are labelled ``job=<job>`` (default ``"fairstream-worker"``, the job
    name deploy/prometheus/prometheus.yml gives the workers) and
    ``instance=<target>``.
    """

    def __init__(
        self,
        targets: Iterable[str],
        rule_files: Iterable[str | Path] = (),
        scrape_interval: str = "1s",
        *,
        job: str = "fairstream-worker",
        binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.targets = list(targets)
        self.rule_files = [Path(p) for p in rule_files]
        self.scrape_interval = scrape_interval
        self.job = job
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log_path: Path | None = None

    def __repr__(self) -> str:
        state = f"running at {self.url}" if self._proc else "stopped"
        return f"PrometheusServer(targets={self.targets!r}, {state})"

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("Prometheus is not running")
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> PrometheusServer:
        if self._proc is not None:
            return self
        binary = self.binary or require_binary("prometheus")
        self._tmp = tempfile.TemporaryDirectory(prefix="fairstream-prom-")
        tmp = Path(self._tmp.name)
        config = tmp / "prometheus.yml"
        config.write_text(
            _config_yaml(self.targets, self.rule_files, self.scrape_interval, self.job)
        )
        self._log_path = tmp / "prometheus.log"
        for attempt in range(3):  # a free port can be taken before we bind it
            self.port = free_port()
            with open(self._log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp / f'data{attempt}'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--web.enable-lifecycle",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            try:
                self._wait_ready()
                return self
            except PrometheusError:
                log_text = self.log()
                self._terminate()
                if "address already in use" not in log_text:
                    self._cleanup()
                    raise
        self._cleanup()
        raise PrometheusError("could not bind a free port for Prometheus")

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with code {self._proc.returncode}:\n{self.log()[-4000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise PrometheusError(
            f"prometheus not ready after {self.startup_timeout}s:\n{self.log()[-4000:]}"
        )

    def stop(self) -> None:
        """SIGTERM, wait up to 10 s, then SIGKILL; removes the temporary directory."""
        self._terminate()
        self._cleanup()

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self.port = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        """What the server has written to stdout/stderr so far."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    # -- HTTP API ------------------------------------------------------------

    def _api(self, path: str, params: dict[str, str] | None = None) -> object:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as e:  # 400/422 carry the PromQL error
            body = json.load(e)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """Evaluate an instant query; a scalar comes back as one unlabelled sample."""
        params = {"query": promql}
        if at is not None:
            params["time"] = repr(at)
        data = self._api("query", params)
        assert isinstance(data, dict)
        kind, result = data["resultType"], data["result"]
        if kind == "vector":
            return [Sample(dict(r["metric"]), float(r["value"][1])) for r in result]
        if kind == "scalar":
            return [Sample({}, float(result[1]))]
        raise PrometheusError(f"query {promql!r} returned a {kind}, not an instant vector")

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[Sample]], bool] = bool,
        timeout: float = 20.0,
        interval: float = 0.25,
    ) -> list[Sample]:
        """Poll ``promql`` until ``predicate(samples)`` holds; return those samples."""
        deadline = time.monotonic() + timeout
        samples: list[Sample] = []
        while True:
            samples = self.query(promql)
            if predicate(samples):
                return samples
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{promql!r} did not satisfy the predicate in {timeout}s; last: {samples}"
                )
            time.sleep(interval)

    def targets_health(self) -> dict[str, str]:
        """``{scrape_url: health}`` of the active targets."""
        data = self._api("targets", {"state": "active"})
        assert isinstance(data, dict)
        return {t["scrapeUrl"]: t["health"] for t in data["activeTargets"]}

    def rules(self) -> list[dict[str, object]]:
        """The loaded rules, as the /api/v1/rules endpoint lists them."""
        data = self._api("rules")
        assert isinstance(data, dict)
        return [rule for group in data["groups"] for rule in group["rules"]]


# -- PromQL held in the deploy files -----------------------------------------


def _panels(panels: list[dict]) -> Iterable[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest panels


def dashboard_queries(path: str | Path = DASHBOARD) -> list[tuple[str, str]]:
    """``[(panel_title, expr), ...]`` for every PromQL target of the dashboard.

    Grafana macros (``$__rate_interval`` ...) are replaced by fixed durations, so
    each expression can be sent to Prometheus as it is.

    >>> queries = dashboard_queries()
    >>> all(expr and "$__" not in expr for _, expr in queries)
    True
    """
    dashboard = json.loads(Path(path).read_text())
    queries = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if expr:
                for macro, value in _GRAFANA_MACROS.items():
                    expr = expr.replace(macro, value)
                queries.append((panel.get("title", ""), expr))
    return queries


def rule_expressions(paths: Iterable[str | Path] = RULE_FILES) -> list[tuple[str, str]]:
    """``[(record or alert name, expr), ...]`` for every rule in ``paths``."""
    import yaml  # PyYAML; a test-only dependency

    out = []
    for path in paths:
        doc = yaml.safe_load(Path(path).read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("record") or rule["alert"], rule["expr"]))
    return out


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_RECORDED = re.compile(r"[a-zA-Z_]\w*:[a-zA-Z_][\w:]*")


def metric_names(promql: str) -> set[str]:
    """Metric and recorded-series names a PromQL expression reads.

    Heuristic but sufficient for our files: names are the identifiers that start
    with ``fairstream`` or contain a colon, once string literals are removed.

    >>> sorted(metric_names('sum by (type) (rate(fairstream_events_consumed_total{type="x"}[1m]))'))
    ['fairstream_events_consumed_total']
    >>> sorted(metric_names('deriv(job:fairstream_consumer_lag_messages:sum[10m:1m]) > 0'))
    ['job:fairstream_consumer_lag_messages:sum']
    """
    names = set()
    for ident in _IDENT.findall(_STRING.sub('""', promql)):
        if ident.startswith("fairstream_") or _RECORDED.fullmatch(ident):
            names.add(ident)
    return names
