"""Plain-text help for ``fairstream``: every flag says what it does and its default.

:func:`finish` walks the parser and its subcommands once they are built: flags
that many commands share get one description here (:data:`COMMON`), and every
parser gets :class:`Formatter`, which appends ``(default: …)`` to a flag's help
where the default is a value.

>>> import argparse
>>> p = argparse.ArgumentParser(prog="x")
>>> _ = p.add_argument("--rate", type=float, default=2.0, help="events per second")
>>> _ = p.add_argument("--bootstrap")
>>> finish(p)
>>> text = " ".join(p.format_help().split())
>>> "events per second (default: 2.0)" in text, "Kafka bootstrap servers" in text
(True, True)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib import metadata
from typing import Any, NoReturn

#: Descriptions of flags several commands share, by destination.
COMMON = {
    "bootstrap": "Kafka bootstrap servers, host:port[,host:port] (default: kafka.bootstrap "
                 "from the settings)",
    "json": "also write the figures to this JSON file",
    "out": "directory for the report and plots",
    "seed": "random seed (a run is reproducible from its seed)",
    "host": "address to listen on (default: serve.host from the settings)",
    "port": "port to listen on (default: serve.port from the settings)",
}


class Parser(argparse.ArgumentParser):
    """A usage error is one line too, pointing at the help (argparse prints the usage
    first, which buries the error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.HelpFormatter):
    """Shows each flag's default where it has a value."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" not in text and default not in (None, False, argparse.SUPPRESS)
                and action.option_strings and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


def version() -> str:
    try:
        return metadata.version("fairstream")
    except metadata.PackageNotFoundError:  # a source tree that was not installed
        return "unknown (not installed)"


def parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``p`` and every subcommand parser under it."""
    out = [p]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                out += parsers(sub)
    return out


#: Numeric flags that may be 0 (the others must be > 0; ports lie in 1..65535).
MAY_BE_ZERO = frozenset({"seed", "hostile", "random_kills", "warmup", "exit_when_idle"})


def bounded(kind: type, dest: str) -> Callable[[str], Any]:
    """``kind`` (int or float) checked for ``dest``'s range: a bad value is a usage error
    (exit 2) before the command starts, not a failure deep inside it.

    >>> bounded(int, "port")("99999")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a port in 1..65535, got 99999
    >>> bounded(int, "limit")("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be > 0, got 0
    """
    def convert(text: str) -> Any:
        value = kind(text)  # a ValueError reads "invalid int value: 'x'"
        if dest == "port":
            if not 1 <= value <= 65535:
                raise argparse.ArgumentTypeError(f"must be a port in 1..65535, got {text}")
        elif not (value >= 0 if dest in MAY_BE_ZERO else value > 0):
            sign = ">= 0" if dest in MAY_BE_ZERO else "> 0"
            raise argparse.ArgumentTypeError(f"must be {sign}, got {text}")
        return value

    convert.__name__ = kind.__name__
    return convert


def finish(p: argparse.ArgumentParser) -> None:
    """Give every parser the formatter, every shared flag its description and every
    numeric flag its range."""
    for parser in parsers(p):
        parser.formatter_class = Formatter
        for action in parser._actions:
            if not action.help and action.dest in COMMON:
                action.help = COMMON[action.dest]
            if isinstance(action, argparse._SubParsersAction) and action.metavar is None:
                action.metavar = "{" + ",".join(action.choices) + "}"  # not its dest's name
            if action.type in (int, float):
                action.type = bounded(action.type, action.dest)
