"""The report's table, group lines and PNG from the results a worker publishes."""

from __future__ import annotations

import json

from stream.experiments import Arm, Experiment
from stream.experiments.report import format_groups, format_table, write_plot
from stream.experiments.results import ExperimentResults


def test_report_from_published_results(tmp_path):
    exp = Experiment(name="e", arms=[Arm(name="control", share=0.5), Arm(name="b", share=0.5)])
    res = ExperimentResults(exp, min_users=2)
    for t in range(20):
        for i in range(10):
            n = 10 * t + i
            res.observe("control", f"c{n}", [float(n % 2), 0.0], ["head", "tail"], ["gender=F"])
            res.observe("b", f"b{n}", [float(n % 3 == 0), 0.0], ["tail", "head"], ["gender=M"])
        res.record(float(t))
    published = json.loads(json.dumps(res.to_dict()))  # what travels on the topic
    table = format_table(published["table"])
    assert table.splitlines()[2].startswith("control*")
    b_row = table.splitlines()[3]
    assert b_row.startswith("b ") and "[" in b_row and "running" in b_row
    groups = format_groups(published)
    assert "control: reward by user group: gender=F 0.2500 (200)" in groups
    assert "b: exposure share by item group: head 0.387, tail 0.613" in groups
    png = write_plot(published, tmp_path / "e.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
