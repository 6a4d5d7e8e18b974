"""How a failed command reads: one line naming the cause and the fix, and an exit code.

Exit 2: the command line or the settings are wrong (fix them and rerun); exit 1:
something failed at run time (a broker that cannot be reached, a port in use, a
bug). No traceback, unless ``-v`` asks for one. Errors raised on purpose carry
their own message (``FairstreamError``, ``BanditsError``, ``LearnersError``);
a few errors from libraries that users cause often get a message of their own
here; anything else is named as unexpected, with its type.

>>> from stream.exceptions import ConfigError
>>> exit_code(ConfigError("bandit.alpha must be >= 0, got -3.0"))
2
>>> one_line(OSError(98, "Address already in use")).split(":")[0]
'address already in use ([Errno 98] Address already in use)'
"""

from __future__ import annotations

import errno
import sys

from bandits.exceptions import BanditsError
from stream.exceptions import ConfigError, FairstreamError

#: Exit codes.
USAGE, RUNTIME, INTERRUPTED = 2, 1, 130


def _usage_types() -> tuple[type[BaseException], ...]:
    """Errors a user fixes in the command line or the settings. ``learners`` is looked up
    only if a command loaded it (importing it here would load torch for every command)."""
    types: list[type[BaseException]] = [ConfigError]
    learners_errors = sys.modules.get("learners.exceptions")
    if learners_errors is not None:
        types.append(learners_errors.DeviceUnavailable)
    return tuple(types)


def _on_purpose() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [FairstreamError, BanditsError]
    learners_errors = sys.modules.get("learners.exceptions")
    if learners_errors is not None:
        types.append(learners_errors.LearnersError)
    return tuple(types)


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    return USAGE if isinstance(exc, _usage_types()) else RUNTIME


def one_line(exc: BaseException) -> str:
    """The message for ``exc``, on one line."""
    if isinstance(exc, KeyboardInterrupt):
        text = "interrupted"
    elif isinstance(exc, _on_purpose()):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        text = (f"address already in use ({exc}): another process holds the port; stop it "
                "or choose another port")
    elif type(exc).__module__.startswith("kafka"):
        text = (f"Kafka client error {type(exc).__name__}: {exc}; check kafka.bootstrap "
                "(FAIRSTREAM_KAFKA__BOOTSTRAP) and that the broker is up")
    else:
        text = (f"unexpected {type(exc).__name__}: {exc} (a bug, or an unchecked input; "
                "rerun with -v for the traceback)")
    return " ".join(text.split())


def report(exc: BaseException, verbose: bool) -> int:
    """Print ``exc`` for the user (with its traceback when ``verbose``); the exit code."""
    if verbose:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    print(f"fairstream: error: {one_line(exc)}", file=sys.stderr)
    return exit_code(exc)
