"""Errors raised on purpose reach the user as one line, not a traceback (no broker)."""

import os
import socket
import subprocess
import sys

import pytest

#: Keys of their own, as an operator sets them: without them worker and serve stop at the
#: built-in-key refusal (tests/stream/core/test_keys.py) before the errors tested here.
KEYS = {"FAIRSTREAM_POLICY__SIGNING_KEY": "cli-errors-test-signing-key",
        "FAIRSTREAM_PRIVACY__PSEUDONYM_KEY": "cli-errors-test-pseudonym-key"}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], text=True,
                          capture_output=True, timeout=120, check=False,
                          env={**KEYS, **(os.environ if env is None else env)})


def test_a_learners_error_is_one_line():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has the CUDA device the test asks for in vain")
    done = run("bench", "learners", "--device", "cuda", "--items", "2")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("fairstream: error:")]
    assert "no CUDA device" in line


def test_a_fairstream_error_is_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[worker]\nno_such_key = 1\n")
    done = run("--config", str(config), "topics", "create")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [line for line in done.stderr.strip().splitlines()
                                                if line.startswith("fairstream: error:")]
    assert "no_such_key" in done.stderr


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The failure is exactly one line on stderr, and no traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fairstream: error: "), done.stderr
    return lines[0]


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("FAIRSTREAM_WORKER__METRICS_PORT", "99999", "must be in 0..65535"),
    ("FAIRSTREAM_BANDIT__ALPHA", "-3", "bandit.alpha must be >= 0"),
    ("FAIRSTREAM_BANDIT__ALPHA", "wide", "expected `float`, got `str`"),
    ("FAIRSTREAM_BANDIT__LAM", "0", "bandit.lam must be > 0"),
    ("FAIRSTREAM_FINETUNE__LR", "nan", "must be a finite number"),
    ("FAIRSTREAM_KAFKA__BOOTSTRAP", "kafka", "not host:port"),
])
def test_a_bad_setting_from_the_environment_names_the_variable(variable, value, says):
    done = run("topics", "create", env={**os.environ, variable: value})
    assert done.returncode == 2
    line = one_error_line(done)
    assert f"{variable}={value}" in line and says in line and "$." not in line


def test_a_bad_setting_in_a_file_names_the_key_and_the_file(tmp_path):
    config = tmp_path / "fs.toml"
    config.write_text('[bandit]\nalpha = "wide"\n')
    done = run("--config", str(config), "topics", "create")
    assert done.returncode == 2
    line = one_error_line(done)
    assert "bandit.alpha" in line and str(config) in line


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [("topics", "create"), ("worker",), ("serve",),
                                     ("produce", "catalog")])
def test_an_unreachable_bootstrap_fails_fast_with_one_line(command):
    done = run(*command, "--bootstrap", f"127.0.0.1:{closed_port()}")
    assert done.returncode == 1
    # One line, and it is the preflight's (its own 5 s bound): kafka-python alone logs an
    # ERROR line per retry for ~30 s, so any client created before the check shows here.
    line = one_error_line(done)
    assert "cannot reach Kafka" in line and "within 5 s" in line
    assert "FAIRSTREAM_KAFKA__BOOTSTRAP" in line
    assert "serving on" not in done.stdout


def test_verbose_adds_the_traceback_to_the_line():
    done = run("-v", "topics", "create", "--bootstrap", f"127.0.0.1:{closed_port()}")
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("fairstream: error: cannot reach")


def test_a_usage_error_exits_2():
    done = run("worker", "--exit-when-idle", "soon")
    assert done.returncode == 2 and "invalid float value" in done.stderr


def test_an_unexpected_error_is_one_line_that_names_its_type(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    # The output directory lies under a file: an OSError nobody raised on purpose.
    done = run("eval", "ope", "--out", str(blocker / "out"), "--resamples", "2")
    assert done.returncode == 1
    line = one_error_line(done)
    assert "unexpected" in line and "-v" in line


@pytest.mark.broker
@pytest.mark.parametrize("command", [("worker",), ("serve", "--port", "{port}")])
def test_a_busy_port_is_one_line_naming_the_setting(broker, command):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        args = [a.format(port=port) for a in command]
        env = {**os.environ, "FAIRSTREAM_WORKER__METRICS_PORT": str(port)}
        done = run(*args, "--bootstrap", broker.bootstrap, env=env)
    assert done.returncode == 1
    line = one_error_line(done)
    setting = "worker.metrics_port" if command[0] == "worker" else "serve.port"
    assert f"127.0.0.1:{port} ({setting}) is already in use" in line
    assert "serving on" not in done.stdout


@pytest.mark.parametrize(("args", "says"), [
    (("broker", "--port", "99999"), "argument --port: must be a port in 1..65535, got 99999"),
    (("serve", "--port", "0"), "argument --port: must be a port in 1..65535, got 0"),
    (("produce", "replay", "--limit", "-5"), "argument --limit: must be > 0, got -5"),
    (("data", "fetch", "nosuch"), "unknown data set 'nosuch'"),
    (("dlq", "tail", "-n", "0"), "argument -n: must be > 0, got 0"),
    (("bench",), "required: {learners,serve,serve-reads,pipeline,scale,profiles,bandits,soak}"),
])
def test_a_bad_command_line_is_one_line_pointing_at_the_help(args, says):
    done = run(*args)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert says in line and line.endswith("--help)"), line


def test_a_busy_broker_port_is_refused_at_once():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run("broker", "--port", str(port))
    assert done.returncode == 1
    # The preflight's line (naming the flag), not the broker's start-up wait for itself,
    # which ended in "no Kafka broker answered ... within 30s".
    assert f"port 127.0.0.1:{port} (--port) is already in use" in one_error_line(done)
