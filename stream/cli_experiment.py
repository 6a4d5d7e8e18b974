"""``fairstream experiment ...``: the experiment subcommands (kept out of stream.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from stream.exceptions import FairstreamError


class NoResults(FairstreamError):
    """The experiments topic holds nothing about the experiment asked for."""


def experiment_report(settings, name: str, out: Path) -> tuple[str, Path]:  # type: ignore[no-untyped-def]
    """The report's text and the PNG it wrote, from the experiments topic."""
    from stream.experiments.report import format_groups, format_table, write_plot
    from stream.kafka.experiments import read_experiments

    book, results = read_experiments(settings)
    got = results.get(name)
    if got is None:
        known = sorted(set(results) | set(book.versions))
        raise NoResults(f"no results for experiment {name!r} on {settings.topics.experiments} "
                        f"(known: {', '.join(known) or 'none'}); the worker publishes them "
                        f"every experiment.results_every_s")
    exp = book.current if book.current is not None and book.current.name == name else None
    head = [f"experiment {name}" + (f" v{exp.version} {exp.status}, last change by "
                                    f"{exp.changed_by}" + (f": {exp.reason}" if exp.reason
                                                           else "") if exp else ""),
            f"always-valid intervals (mSPRT, normal mixture τ={got['mixture_sd']:g}), "
            f"level {1 - got['alpha']:.0%}; * = control"]
    png = write_plot(got, out / f"experiment-{name}.png")
    return "\n".join([*head, format_table(got["table"]), "", *format_groups(got)]), png


def cmd_experiment_report(args: argparse.Namespace) -> int:
    from stream.cli import _kafka_settings

    text, png = experiment_report(_kafka_settings(args), args.name, Path(args.out))
    print(text)
    print(f"plot: {png}")
    if args.json:
        Path(args.json).write_text(json.dumps({"report": text, "plot": str(png)}))
    return 0


def add_parser(sub: Any) -> None:
    """``experiment report NAME`` under ``sub`` (the top-level subparsers)."""
    ex = sub.add_parser("experiment", help="online experiments: per-arm results").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    er = ex.add_parser("report", help="per-arm table and a PNG of reward and disparity over "
                                      "time, with always-valid intervals",
                       description="Read the experiment's latest results from the experiments "
                                   "topic (published by the worker) and print one row per arm: "
                                   "share, impressions, mean reward, difference with control "
                                   "and its always-valid interval, p-value, exposure "
                                   "disparity, status. Writes experiment-NAME.png under --out.")
    er.add_argument("name", metavar="NAME", help="the experiment's name")
    er.add_argument("--out", default=".")
    er.add_argument("--json")
    er.add_argument("--bootstrap")
    er.set_defaults(func=cmd_experiment_report)
