"""Errors raised on purpose reach the user as one line, not a traceback (no broker)."""

import subprocess
import sys

import pytest


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], text=True,
                          capture_output=True, timeout=120, check=False, env=env)


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
