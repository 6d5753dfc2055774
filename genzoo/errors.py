"""The exceptions a command ends with, and the exit codes the CLI maps them to."""

import errno
import logging
import os
import re
import sys
import threading
import warnings

EXIT_USER_ERROR = 2  # bad input: nothing was written
EXIT_NONFINITE = 3  # training met a NaN/Inf loss or gradient; eval produced a non-finite figure
EXIT_STORAGE = 74  # the disk filled or failed mid-write (sysexits' EX_IOERR)
EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGINT after saving (sysexits' EX_TEMPFAIL: retry)
EXIT_OUT_OF_MEMORY = 78  # a program does not fit the device's memory (sysexits' EX_CONFIG)
EXIT_INTERRUPTED = 130  # Ctrl-C outside training (as a shell reports SIGINT)
EXIT_BROKEN_PIPE = 141  # stdout's reader went away (`| head`), as a shell reports SIGPIPE


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits 2."""


class NonFinite(Exception):
    """A NaN or Inf where training or evaluation needs a number (exit 3)."""


class Preempted(Exception):
    """Training stopped on a signal after saving a checkpoint (exit 75)."""


# The storage failures a command cannot recover from but a rerun can, once the disk has room
# (or works) again: a full disk or quota, an I/O error, a file system gone read-only.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


# Set once a storage failure has been seen: the process is on its way out, and what its
# threads report after that (a writer whose queue was closed under it) follows from it.
_STORAGE_FAILED = threading.Event()


def _chain(error: BaseException | None):
    """`error` and what it wraps: causes, contexts and groups' members (orbax re-raises a
    failed background write wrapped in its own exceptions)."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


def storage_error(error: BaseException | None) -> OSError | None:
    """The storage failure behind `error`, or None (found: later reports from the process's
    threads are quieted, `quiet_storage_reports`). Tensorstore reports the OS's error inside
    a ValueError's text."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            _STORAGE_FAILED.set()
            return e
        code = re.search(r"os_error_code='(\d+)'", str(e))
        if code and int(code[1]) in STORAGE_ERRNOS:
            _STORAGE_FAILED.set()
            return OSError(int(code[1]), os.strerror(int(code[1])))
    return None


def out_of_memory(error: BaseException | None) -> str | None:
    """The first line of XLA's out-of-memory report behind `error`, or None: a step, a
    state or a batch too large for the device (GPU/TPU HBM, or the host's RAM on CPU)."""
    for e in _chain(error):
        text = str(e).strip()
        if isinstance(e, RuntimeError) and "RESOURCE_EXHAUSTED" in text and "memory" in text:
            return text.splitlines()[0]
    return None


def ending(error: BaseException, command: str | None) -> tuple[str, int] | None:
    """How a `genzoo COMMAND` that raised `error` ends: the line for stderr ("" for none) and
    the exit code; None for an error that is a bug (the CLI lets its traceback through)."""
    if isinstance(error, BrokenPipeError):
        return "", EXIT_BROKEN_PIPE
    if isinstance(error, UserError):
        return f"genzoo: error: {error}", EXIT_USER_ERROR
    if isinstance(error, NonFinite):
        return f"genzoo: error: {error}", EXIT_NONFINITE
    if isinstance(error, Preempted):
        return f"genzoo: {error}", EXIT_PREEMPTED
    if isinstance(error, KeyboardInterrupt):
        return "genzoo: interrupted", EXIT_INTERRUPTED
    training = command in ("train", "chain")
    if (failure := storage_error(error)) is not None:
        return f"genzoo: error: {_storage_message(failure, training)}", EXIT_STORAGE
    if (report := out_of_memory(error)) is not None:
        hint = _MEMORY_HINTS.get("train" if training else command, _MEMORY_HINTS[""])
        return f"genzoo: error: out of memory ({report}); {hint}", EXIT_OUT_OF_MEMORY
    return None


_MEMORY_HINTS = {  # what to lower when a command's programs do not fit the device
    "train": "lower train.batch_size (train.grad_accum=N keeps the global batch), shard the "
    "state with mesh.fsdp, or recompute activations with model.remat=dots",
    "eval": "lower eval.batch_size (--set eval.batch_size=N)",
    "": "ask for fewer outputs at once",
}


def _storage_message(error: OSError, training: bool) -> str:
    """One line for a storage failure: what, where, and what a rerun does."""
    where = f" ({error.filename})" if error.filename else ""
    then = "training resumes from its last complete checkpoint" if training else "nothing was kept"
    return (
        f"{error.strerror or os.strerror(error.errno)}{where}; make room (or repair the disk) "
        f"and run the same command again: {then}"
    )


def _after_storage_failure(error: BaseException | None) -> bool:
    return storage_error(error) is not None or _STORAGE_FAILED.is_set()


class _StorageReports(logging.Filter):
    """Drops log records that carry a storage failure, or follow one (orbax logs its
    background threads' failures with tracebacks, asyncio its tasks' at exit)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not _after_storage_failure(error) or record.levelno < logging.ERROR


_STORAGE_REPORTS = _StorageReports()


def quiet_storage_reports() -> None:
    """The CLI reports a storage failure in one line; the same failure also surfaces in
    orbax's background threads (logged), tensorboardX's writer thread (threading's hook),
    atexit flushes (the unraisable hook) and coroutines left unawaited (warnings), some 300
    lines of tracebacks for one full disk. Those reports, and the errors that follow them,
    are dropped from this call on."""
    _STORAGE_FAILED.clear()  # a new command (tests run several in one process)
    logging.getLogger("absl").addFilter(_STORAGE_REPORTS)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_STORAGE_REPORTS)
    if getattr(threading.excepthook, "genzoo_quiet", False):
        return
    thread_hook, unraisable_hook, show = (
        threading.excepthook,
        sys.unraisablehook,
        warnings.showwarning,
    )

    def on_thread(args):
        if not _after_storage_failure(args.exc_value):
            thread_hook(args)

    def on_unraisable(report):
        if not _after_storage_failure(report.exc_value):
            unraisable_hook(report)

    def on_warning(*args, **kwargs):
        if not _STORAGE_FAILED.is_set():
            show(*args, **kwargs)

    on_thread.genzoo_quiet = True
    threading.excepthook, sys.unraisablehook = on_thread, on_unraisable
    warnings.showwarning = on_warning


def quiet_closed_loop_reports() -> None:
    """After a failed orbax restore or save, tensorstore's pending reads or writes complete
    into an asyncio loop orbax has closed, and each reports a traceback through
    sys.unraisablehook (hundreds of lines for one damaged file or a full disk). Those, and
    only those, are dropped: installed by every Checkpointer, for the API as for the CLI
    (`quiet_storage_reports` is the CLI's, after a storage failure)."""
    previous = sys.unraisablehook
    if getattr(previous, "genzoo_quiet", False):
        return

    def hook(report):
        value = report.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            previous(report)

    hook.genzoo_quiet = True
    sys.unraisablehook = hook


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
