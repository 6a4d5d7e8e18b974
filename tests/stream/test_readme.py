"""The README's "Command line" and "Configuration" sections say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from stream.cli import build_parser
from stream.cli_help import parsers
from stream.settings import load_settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_configuration_example_is_valid_settings(tmp_path):
    (toml,) = re.findall(r"```toml\n(.*?)```", section("Configuration"), flags=re.S)
    path = tmp_path / "fs.toml"
    path.write_text(toml)
    s = load_settings(path, env={})
    assert s.worker.checkpoint_path == "" and s.worker.log_every_s == 30
    assert s.serve.port == 8000 and s.bandit.algorithm == "hybrid_linucb"


def test_the_command_line_section_lists_every_command():
    listed = re.findall(r"^fairstream ([a-z]+(?: [a-z|-]+)?)", section("Command line"), re.M)
    words = {w for line in listed for w in re.split(r"[ |]", line)}
    leaves = [p for p in parsers(build_parser()) if p._subparsers is None]
    assert len(leaves) > 15
    for parser in leaves:
        *_, name = parser.prog.split()
        assert name in words, f"README's Command line does not name {parser.prog}"
    assert "--version" in section("Command line")
