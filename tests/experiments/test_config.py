"""Experiment configurations: validation, versioned changes, refusals that change nothing."""

from __future__ import annotations

import msgspec
import pytest

from stream.exceptions import ConfigError
from stream.experiments import Arm, Experiment, ExperimentBook, InvalidExperiment
from stream.experiments.config import decode_experiment, encode_experiment
from stream.settings import load_settings


def _exp(name="e", **kw):
    arms = kw.pop("arms", [Arm(name="control", share=0.6), Arm(name="b", share=0.4, alpha=0.1)])
    return Experiment(name=name, arms=arms, **kw)


@pytest.mark.parametrize("arms, control, reason", [
    ([Arm(name="control", share=0.6), Arm(name="b", share=0.3)], "control", "invalid_shares"),
    ([Arm(name="control", share=0.6), Arm(name="b", share=0.6)], "control", "invalid_shares"),
    ([Arm(name="control", share=1.5), Arm(name="b", share=-0.5)], "control", "invalid_shares"),
    ([Arm(name="control", share=float("nan"))], "control", "invalid_shares"),
    ([Arm(name="control", share=0.5), Arm(name="control", share=0.5)], "control",
     "duplicate_arm"),
    ([Arm(name="a", share=1.0)], "control", "unknown_arm"),
    ([], "control", "invalid_arms"),
    ([Arm(name=f"a{i}", share=1 / 9) for i in range(9)], "a0", "invalid_arms"),
    ([Arm(name="control", share=1.0, exposure_strength=-1.0)], "control", "invalid_arm"),
    ([Arm(name="control", share=1.0, version=0)], "control", "invalid_arm"),
    ([Arm(name="Control!", share=1.0)], "Control!", "invalid_name"),
])
def test_invalid_experiments_name_the_problem(arms, control, reason):
    with pytest.raises(InvalidExperiment) as err:
        Experiment(name="e", arms=arms, control=control).validate()
    assert err.value.reason == reason


def test_shares_sum_to_one_within_tolerance():
    thirds = [Arm(name=n, share=1 / 3) for n in ("control", "b", "c")]
    assert Experiment(name="e", arms=thirds).validate().shares()["control"] == 1 / 3


def test_changes_are_versioned_and_refusals_leave_the_book():
    book = ExperimentBook()
    v1 = book.create(_exp(), by="admin")
    assert book.apply(v1) and v1.version == 1
    for change, reason in [
            (lambda: book.create(_exp()), "duplicate_experiment"),
            (lambda: book.create(_exp("f")), "experiment_running"),
            (lambda: book.stop("nope", "x"), "unknown_arm"),
            (lambda: book.stop("control", "x"), "invalid_arm"),
            (lambda: book.promote("nope"), "unknown_arm"),
            (lambda: book.set_shares({"control": 0.5, "b": 0.6}), "invalid_shares"),
            (lambda: book.set_shares({"control": 1.0}), "invalid_shares")]:
        with pytest.raises(InvalidExperiment) as err:
            change()
        assert err.value.reason == reason
        assert book.current is v1
    v2 = book.set_shares({"control": 0.5, "b": 0.5}, reason="ramp up")
    assert not book.apply(v1) and book.apply(v2) and book.current.version == 2
    v3 = book.stop("b", "guardrail reward", by="guardrail")
    assert book.apply(v3)
    assert book.current.shares() == {"control": 1.0, "b": 0.0}
    assert book.current.arm("b").stopped == "guardrail reward"
    assert book.current.changed_by == "guardrail"
    with pytest.raises(InvalidExperiment, match="stopped already"):
        book.stop("b", "again")
    assert book.apply(book.rollback())
    assert book.current.status == "rolled_back" and book.current.version == 4
    with pytest.raises(InvalidExperiment) as err:
        book.promote("b")
    assert err.value.reason == "no_experiment"
    # a new experiment may run now; the old name stays taken
    assert book.apply(book.create(_exp("f")))
    assert book.current.name == "f"


def test_codec_round_trip_and_refusals():
    exp = _exp()
    assert decode_experiment(encode_experiment(exp)) == exp
    with pytest.raises(InvalidExperiment) as err:
        decode_experiment(b'{"name": "e", "arms": [{"name": "control", "share": 0.5}]}')
    assert err.value.reason == "invalid_shares"
    with pytest.raises(InvalidExperiment) as err:
        decode_experiment(b'{"name": "e", "arms": [], "colour": 1}')
    assert err.value.reason == "invalid_field"


def test_settings_experiment_is_checked_at_load(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[experiment]\nname = "alpha"\narms = [\n'
                    '  {name = "control", share = 0.5},\n'
                    '  {name = "low", share = 0.5, alpha = 0.2},\n]\n')
    s = load_settings(path, env={})
    assert [a.name for a in s.experiment.arms] == ["control", "low"]
    path.write_text('[experiment]\nname = "alpha"\narms = [\n'
                    '  {name = "control", share = 0.5},\n'
                    '  {name = "low", share = 0.4},\n]\n')
    with pytest.raises(ConfigError, match=r"experiment.arms: shares sum to 0.9"):
        load_settings(path, env={})
    with pytest.raises(ConfigError, match=r"experiment\.error_rate"):
        load_settings(env={"FAIRSTREAM_EXPERIMENT__ERROR_RATE": "1.5"})


def test_arm_encoding_omits_unset_fields():
    assert msgspec.json.encode(Arm(name="b", share=0.5)) == b'{"name":"b","share":0.5}'


def test_settings_arms_from_the_environment_are_json():
    env = {"FAIRSTREAM_EXPERIMENT__NAME": "alpha",
           "FAIRSTREAM_EXPERIMENT__ARMS": '[{"name": "control", "share": 0.7}, '
                                          '{"name": "b", "share": 0.3, "version": 4}]'}
    s = load_settings(env=env)
    assert [(a.name, a.share, a.version) for a in s.experiment.arms] == \
        [("control", 0.7, None), ("b", 0.3, 4)]
    with pytest.raises(ConfigError, match=r"FAIRSTREAM_EXPERIMENT__ARMS=\[x: experiment.arms "
                                          r"must be JSON"):
        load_settings(env={**env, "FAIRSTREAM_EXPERIMENT__ARMS": "[x"})
    with pytest.raises(ConfigError, match=r"shares sum to 1\.1"):
        load_settings(env={**env, "FAIRSTREAM_EXPERIMENT__ARMS":
                           '[{"name": "control", "share": 0.7}, {"name": "b", "share": 0.4}]'})


def test_an_arm_in_settings_is_an_arm_less_its_stop():
    """``[experiment]`` arms and the wire format's arms name the same fields (the settings
    cannot import this package): a field added to one and not the other fails here."""
    import msgspec

    from stream.experiments.config import Arm
    from stream.settings import ExperimentArmSettings

    settings_fields = {f.name for f in msgspec.structs.fields(ExperimentArmSettings)}
    wire_fields = {f.name for f in msgspec.structs.fields(Arm)}
    assert settings_fields == wire_fields - {"stopped"}
