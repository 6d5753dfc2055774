"""The exceptions a command ends with, and the exit codes the CLI maps them to."""

import os
import re

EXIT_USER_ERROR = 2  # bad input: nothing was written
EXIT_NONFINITE = 3  # training met a NaN/Inf loss or gradient; eval produced a non-finite figure
EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGINT after saving (sysexits' EX_TEMPFAIL: retry)


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits 2."""


class NonFinite(Exception):
    """A NaN or Inf where training or evaluation needs a number (exit 3)."""


class Preempted(Exception):
    """Training stopped on a signal after saving a checkpoint (exit 75)."""


# Every environment knob with a fixed set of values, the default first (docs/usage.md has
# the table). `check_environment` refuses any other value before a command starts, so a typo
# is one line and exit 2, not a silently ignored switch.
KNOBS = {
    "GENZOO_ATTENTION": ("auto", "xla", "pallas"),  # attention kernel (layers/attention.py)
    "GENZOO_ATTENTION_GRAD": ("auto", "fused", "manual", "autodiff"),  # its backward (attend.py)
    "GENZOO_MATMUL_GRAD": ("auto", "wide", "autodiff"),  # weight gradients' form (dots.py)
    "GENZOO_INT8": ("auto", "off"),  # int8 operands in decode steps (quant.py)
    "GENZOO_OVERLAP": ("1", "0"),  # init and eval compile beside the train step (aot.py)
    "GENZOO_EXECUTABLES": ("1", "0"),  # keep compiled programs for the next launch
    "GENZOO_THREEFRY": ("xla", "kernel"),  # GPU: threefry as XLA ops or one CUDA kernel
    "GENZOO_OFFLINE": ("0", "1"),  # 1: never download data sets
    "GENZOO_DISTRIBUTED": ("off", "auto"),  # auto: join the cluster JAX detects
    "GENZOO_MALLOC": ("auto", "reuse", "default"),  # glibc malloc tuning, auto: CPU only
}


def env_choice(name: str, choices: tuple[str, ...] | None = None) -> str:
    """The environment knob `name` (its first choice when unset; `choices` default to
    `KNOBS[name]`); any other value is a UserError."""
    choices = choices or KNOBS[name]
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


# Knobs that take a number or a shape: their form, checked at start too (the values' meaning
# where they are read: a tiling must also be powers of two, layers/flash.py).
FORMATS = {
    "GENZOO_ATTENTION_BLOCKS": (r"[1-9][0-9]*", "a positive integer"),
    "GENZOO_FLASH_TILES": (r"[0-9]+x[0-9]+/[0-9]+x[0-9]+(/[0-9]+)?", "FQxFK/OUTERxINNER[/STAGES]"),
}


def check_environment() -> None:
    """UserError for the first knob in `KNOBS` set to a value it does not take, or in
    `FORMATS` set to a value not of its form."""
    for name in KNOBS:
        env_choice(name)
    for name, (form, words) in FORMATS.items():
        value = os.environ.get(name)
        if value is not None and not re.fullmatch(form, value):
            raise UserError(f"{name} must be {words}; got {value!r}")
