"""Plants small, plausible bugs one at a time and checks the test suite catches each one.

    make mutants                                  # ~80 min on 2 cores; outside CI
    python tests/mutants.py "beam" "CLIP"         # those whose name contains a word
    python tests/mutants.py genzoo/optim.py       # those planted in a file

Each mutant (`mutant_list.py`, `mutant_list_io.py`) names a file, a snippet and its mutated
form, and the tests that should fail.
Bugs are planted in a scratch copy of the checkout (the files git tracks or would add), whose
package shadows the installed one through PYTHONPATH, so the working tree is never touched: a
commit made while mutants run once took a planted bug with it. Prints one line per mutant and
exits non-zero if any survives, so the suite keeps its teeth as it grows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from mutant_list import MUTANTS  # beside this file: the script's folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent


def scratch_copy() -> Path:
    """The checkout's tracked and addable files, copied to a fresh temporary folder."""
    git = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
    listed = subprocess.run(git, cwd=ROOT, capture_output=True, check=True).stdout.decode()
    scratch = Path(tempfile.mkdtemp(prefix="genzoo-mutants-"))
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, scratch / name)
    return scratch


def pytest_in(scratch: Path, tests: str) -> int:
    """pytest's exit code for `tests` run in `scratch`, importing its genzoo."""
    paths = [str(scratch), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests.split()]
    return subprocess.run(cmd, cwd=scratch, env=env, capture_output=True).returncode


def run(scratch, name, path, before, after, tests) -> bool:
    """True if the tests (run in `scratch`, with the mutant planted there) catch it."""
    file = scratch / path
    original = file.read_text()
    if original.count(before) != 1:
        print(f"STALE     {name}: snippet not found once in {path}")
        return False
    try:
        file.write_text(original.replace(before, after))
        code = pytest_in(scratch, tests)
    finally:
        file.write_text(original)
    print(f"{'killed' if code else 'SURVIVED':<9} {name} ({tests})", flush=True)
    return code != 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # unwinds through `main`'s finally: the scratch copy is removed


def main(names: list[str]) -> int:
    """Every mutant, or those whose name contains one of `names` or whose file is one."""
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` or a timeout, as Ctrl-C
    chosen = [m for m in MUTANTS if not names or any(n in m[0] or n == m[1] for n in names)]
    scratch = scratch_copy()
    try:
        # A copy that fails its own tests would "kill" every mutant: check it passes first.
        if pytest_in(scratch, "tests/test_teeth.py") != 0:
            print(f"the unmutated copy in {scratch} fails tests/test_teeth.py: nothing planted")
            return 2
        results = [run(scratch, *m) for m in chosen]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{sum(results)} of {len(results)} mutants killed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
