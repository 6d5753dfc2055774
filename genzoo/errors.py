"""The exceptions a command ends with, and the exit codes the CLI maps them to."""

import os

EXIT_USER_ERROR = 2  # bad input: nothing was written
EXIT_NONFINITE = 3  # training met a NaN/Inf loss or gradient; eval produced a non-finite figure
EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGINT after saving (sysexits' EX_TEMPFAIL: retry)


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits 2."""


class NonFinite(Exception):
    """A NaN or Inf where training or evaluation needs a number (exit 3)."""


class Preempted(Exception):
    """Training stopped on a signal after saving a checkpoint (exit 75)."""


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """The environment knob `name` (`choices[0]` when unset); any other value is a UserError."""
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value
