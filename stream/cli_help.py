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
from importlib import metadata

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


def finish(p: argparse.ArgumentParser) -> None:
    """Give every parser the formatter and every shared flag its description."""
    for parser in parsers(p):
        parser.formatter_class = Formatter
        for action in parser._actions:
            if not action.help and action.dest in COMMON:
                action.help = COMMON[action.dest]
