"""Experiment configuration: a name, arms with traffic shares, and the versioned changes.

An :class:`Experiment` is a name plus :class:`Arm` s; each arm is a policy
configuration (exploration ``alpha``, ``exploration`` ucb/ts, exposure
``exposure_strength``, or a pinned published ``version``; unset fields take the
served policy's) with a traffic share. One arm is the control. Users are assigned
sticky by a keyed hash of their pseudonym and the experiment's salt
(:func:`stream.experiments.assign.assign`).

Every change makes a new :class:`Experiment` with ``version + 1`` (and who made it
and why); :class:`ExperimentBook` holds the one in force and the names ever used. A
refused change raises :class:`InvalidExperiment` and leaves the book as it was.

>>> book = ExperimentBook()
>>> exp = book.create(Experiment(name="alpha", arms=[Arm(name="control", share=0.5),
...                                                  Arm(name="low", share=0.5, alpha=0.1)]))
>>> book.apply(exp), book.current.version
(True, 1)
>>> book.apply(book.stop("low", reason="guardrail: reward")); book.current.shares()
True
{'control': 1.0, 'low': 0.0}
>>> book.create(Experiment(name="alpha", arms=[Arm(name="control", share=1.0)]))
Traceback (most recent call last):
...
stream.experiments.exceptions.InvalidExperiment: duplicate_experiment: experiment 'alpha' ...
"""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING, Literal

import msgspec

from stream.experiments.exceptions import InvalidExperiment

if TYPE_CHECKING:
    from stream.settings import ExperimentSettings

#: At most this many arms (Prometheus labels stay bounded).
MAX_ARMS = 8
#: Shares must sum to 1 within this.
SHARE_TOLERANCE = 1e-9
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,47}$")

Status = Literal["running", "promoted", "rolled_back"]


class Arm(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One policy configuration and its traffic share; ``None`` = the served policy's."""

    name: str
    share: float
    alpha: float | None = None
    exploration: Literal["ucb", "ts"] | None = None
    exposure_strength: float | None = None
    version: int | None = None
    #: why the arm was stopped (its users go to control); empty while it runs
    stopped: str = ""

    def scoring(self) -> tuple[float | None, str | None, float | None, int | None]:
        """What makes this arm's policy differ from the served one."""
        return (self.alpha, self.exploration, self.exposure_strength, self.version)


class Experiment(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An experiment as configured (settings ``[experiment]``) or changed (admin API)."""

    name: str
    arms: list[Arm]
    control: str = "control"
    #: the assignment salt; empty = the name (a new name re-draws every user)
    salt: str = ""
    #: a guardrail breach stops the arm (its share goes to control); else it is flagged
    auto_stop: bool = False
    version: int = 1
    status: Status = "running"
    winner: str = ""
    changed_by: str = "settings"
    reason: str = ""
    ts: float = 0.0

    @property
    def key(self) -> str:
        return self.salt or self.name

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise InvalidExperiment("unknown_arm", f"experiment {self.name!r} has no arm "
                                f"{name!r} (arms: {[a.name for a in self.arms]})")

    def shares(self) -> dict[str, float]:
        """Effective traffic shares: a stopped arm's users go to control; after a promote
        or a roll-back, everyone goes to the winner."""
        if self.status != "running":
            return {a.name: 1.0 if a.name == self.winner else 0.0 for a in self.arms}
        out = {a.name: 0.0 if a.stopped else a.share for a in self.arms}
        out[self.control] += math.fsum(a.share for a in self.arms if a.stopped)
        return out

    def route(self, arm: str) -> str:
        """The arm that serves users whose hash falls in ``arm``'s range."""
        if self.status != "running":
            return self.winner
        for a in self.arms:
            if a.name == arm:
                return self.control if a.stopped else arm
        raise InvalidExperiment("unknown_arm", f"no arm {arm!r}")

    def validate(self) -> Experiment:
        """Raise :class:`InvalidExperiment` naming the first problem; else return self."""
        if not _NAME.match(self.name):
            raise InvalidExperiment("invalid_name", f"experiment name {self.name!r} must match "
                                    f"{_NAME.pattern}")
        if not 1 <= len(self.arms) <= MAX_ARMS:
            raise InvalidExperiment("invalid_arms",
                                    f"{len(self.arms)} arms; expected 1..{MAX_ARMS}")
        names = [a.name for a in self.arms]
        for arm in self.arms:
            if not _NAME.match(arm.name):
                raise InvalidExperiment("invalid_name",
                                        f"arm name {arm.name!r} must match {_NAME.pattern}")
            if not (math.isfinite(arm.share) and 0.0 <= arm.share <= 1.0):
                raise InvalidExperiment("invalid_shares",
                                        f"arm {arm.name!r} share {arm.share!r} not in [0, 1]")
            for field in ("alpha", "exposure_strength"):
                value = getattr(arm, field)
                if value is not None and not (math.isfinite(value) and value >= 0):
                    raise InvalidExperiment("invalid_arm", f"arm {arm.name!r}: {field} "
                                            f"{value!r} must be finite and >= 0")
            if arm.version is not None and arm.version < 1:
                raise InvalidExperiment("invalid_arm",
                                        f"arm {arm.name!r}: version {arm.version} < 1")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InvalidExperiment("duplicate_arm", f"arm names repeat: {dup}")
        if self.control not in names:
            raise InvalidExperiment("unknown_arm",
                                    f"control {self.control!r} is not an arm ({names})")
        total = math.fsum(a.share for a in self.arms)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise InvalidExperiment("invalid_shares",
                                    f"shares sum to {total!r}, not 1 ({self.shares()})")
        if self.winner and self.winner not in names:
            raise InvalidExperiment("unknown_arm", f"winner {self.winner!r} is not an arm")
        return self


def _changed(exp: Experiment, arms: list[Arm], by: str, reason: str,
             **fields: object) -> Experiment:
    return msgspec.structs.replace(exp, arms=arms, version=exp.version + 1, changed_by=by,
                                   reason=reason, ts=time.time(), **fields).validate()


class ExperimentBook:
    """The experiment in force (at most one runs at a time) and every name ever used.

    Changes are pure: :meth:`create`, :meth:`stop`, :meth:`promote`, :meth:`rollback`
    return the new :class:`Experiment` without applying it; the caller publishes it and
    every follower (this book too) :meth:`apply` s it, newest version wins.
    """

    def __init__(self) -> None:
        self.current: Experiment | None = None
        self.versions: dict[str, int] = {}  # name -> newest version seen

    def __repr__(self) -> str:
        c = self.current
        return ("ExperimentBook(current=None)" if c is None else
                f"ExperimentBook(current={c.name!r} v{c.version} {c.status} {c.shares()})")

    def apply(self, exp: Experiment) -> bool:
        """Adopt ``exp`` if it is newer than what this book holds of its name; True if so."""
        exp.validate()
        if exp.version <= self.versions.get(exp.name, 0):
            return False
        self.versions[exp.name] = exp.version
        c = self.current
        if c is None or c.name == exp.name or exp.status == "running" or \
                (c.status != "running" and exp.ts >= c.ts):
            self.current = exp
        return True

    def running(self) -> Experiment:
        if self.current is None or self.current.status != "running":
            raise InvalidExperiment("no_experiment", "no experiment is running")
        return self.current

    def create(self, exp: Experiment, by: str = "admin") -> Experiment:
        """A new experiment; refused if its name was used before or another one runs."""
        exp.validate()
        if exp.name in self.versions:
            raise InvalidExperiment("duplicate_experiment",
                                    f"experiment {exp.name!r} exists already (version "
                                    f"{self.versions[exp.name]}); pick a new name")
        c = self.current
        if c is not None and c.status == "running":
            raise InvalidExperiment("experiment_running",
                                    f"experiment {c.name!r} is running: promote an arm or "
                                    f"roll it back first")
        if any(a.stopped for a in exp.arms) or exp.status != "running":
            raise InvalidExperiment("invalid_arms", "a new experiment starts running, with "
                                    "no arm stopped")
        return msgspec.structs.replace(exp, version=1, changed_by=by, ts=time.time())

    def stop(self, arm: str, reason: str, by: str = "admin") -> Experiment:
        """Stop ``arm``: its share goes to control (a guardrail, or by hand)."""
        exp = self.running()
        stopped = exp.arm(arm)
        if arm == exp.control:
            raise InvalidExperiment("invalid_arm", "the control arm cannot be stopped; roll "
                                    "the experiment back instead")
        if stopped.stopped:
            raise InvalidExperiment("invalid_arm", f"arm {arm!r} is stopped already "
                                    f"({stopped.stopped})")
        # The arm keeps its range of the hash space (``share``); its users are routed to
        # control (:meth:`Experiment.route`), so no other user changes arm.
        arms = [msgspec.structs.replace(a, stopped=reason or "stopped")
                if a.name == arm else a for a in exp.arms]
        return _changed(exp, arms, by, reason)

    def set_shares(self, shares: dict[str, float], by: str = "admin",
                   reason: str = "") -> Experiment:
        """New shares for the running experiment (every arm named, summing to 1)."""
        exp = self.running()
        for name in shares:
            exp.arm(name)
        missing = sorted(set(exp.shares()) - set(shares))
        if missing:
            raise InvalidExperiment("invalid_shares", f"no share given for {missing}")
        arms = [msgspec.structs.replace(a, share=float(shares[a.name])) for a in exp.arms]
        if any(a.stopped and a.share > 0 for a in arms):
            raise InvalidExperiment("invalid_shares", "a stopped arm keeps no share")
        return _changed(exp, arms, by, reason)

    def promote(self, arm: str, by: str = "admin", reason: str = "") -> Experiment:
        """End the experiment: ``arm`` takes all the traffic."""
        exp = self.running()
        exp.arm(arm)
        return _changed(exp, exp.arms, by, reason or f"promoted {arm}", status="promoted",
                        winner=arm)

    def rollback(self, by: str = "admin", reason: str = "") -> Experiment:
        """End the experiment: control takes all the traffic."""
        exp = self.running()
        return _changed(exp, exp.arms, by, reason or "rolled back", status="rolled_back",
                        winner=exp.control)


def experiment_from_settings(e: ExperimentSettings) -> Experiment | None:
    """The experiment ``[experiment]`` configures (validated), or None."""
    if not e.name:
        return None
    # ExperimentArmSettings is Arm less ``stopped`` (settings stay below this package).
    arms = [Arm(**msgspec.structs.asdict(a)) for a in e.arms]
    return Experiment(name=e.name, arms=arms, control=e.control, salt=e.salt,
                      auto_stop=e.auto_stop).validate()


_decoder = msgspec.json.Decoder(Experiment)


def encode_experiment(exp: Experiment) -> bytes:
    return msgspec.json.encode(exp)


def decode_experiment(raw: bytes) -> Experiment:
    """Decode and validate; :class:`InvalidExperiment` (``invalid_field``) when malformed."""
    try:
        exp = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise InvalidExperiment("invalid_field", str(exc)) from None
    return exp.validate()
