#!/usr/bin/env python3
"""One entry point for working on discord-voice; needs only Python >= 3.11 and its `venv` module.

    python3 dev.py demo [args...]    run the offline demo: python -m discord_voice demo [args...]
    python3 dev.py test [args...]    run the test suite: python -m pytest [args...]
    python3 dev.py lint              mypy --strict (files from setup.cfg: the package, tests,
                                     bench, examples), ruff check . and ruff format --check .
    python3 dev.py bench [args...]   run bench/bench_send.py [args...]
    python3 dev.py setup             only create or refresh .venv/

Every command first makes sure `.venv/` (inside the repository) exists and holds the project in
editable mode with its test and lint tools (`pip install -e ".[test,lint]"`). The install runs
only when needed: a stamp file in `.venv/` records a hash of the packaging files (setup.cfg,
setup.py, pyproject.toml if any), and a change to them triggers a reinstall. pip's output is shown
only when it fails. Nothing outside `.venv/` is touched, pip is not upgraded, and no system
library (such as libopus) is needed: the test extra brings a bundled one from PyPI.

Commands run from the repository root (so paths given to `test` are relative to it) and exit with
the exit code of the program they run; `test` fails when no test is collected (pytest's exit 5).

This file is standard library only and avoids newer syntax so that an old Python can still read
it far enough to refuse itself with a clear message.
"""

import sys

MIN_PYTHON = (3, 11)

if sys.version_info < MIN_PYTHON:
    sys.stderr.write(
        "dev.py needs Python %d.%d or newer, but this is Python %d.%d (%s).\n"
        "Run it with a newer interpreter, for example: python3.11 dev.py ...\n"
        % (MIN_PYTHON[0], MIN_PYTHON[1], sys.version_info[0], sys.version_info[1], sys.executable)
    )
    sys.exit(1)

import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".dev-py-install-stamp"
EXTRAS = "test,lint"
PACKAGING_FILES = ("setup.cfg", "setup.py", "pyproject.toml")
BENCH_SCRIPT = Path("bench") / "bench_send.py"

USAGE = """usage: python3 dev.py COMMAND [args...]

commands:
  demo [args...]    run the offline demo (python -m discord_voice demo)
  test [args...]    run the tests (python -m pytest, config in setup.cfg)
  lint              mypy --strict, ruff check . and ruff format --check .
  bench [args...]   run bench/bench_send.py
  setup             only create or refresh .venv/
"""


def say(message: str) -> None:
    """Print a dev.py status line on stderr, so a command's own stdout stays clean."""
    sys.stderr.write("dev.py: " + message + "\n")
    sys.stderr.flush()


def venv_python() -> Path:
    """The virtualenv's interpreter (POSIX `bin/python`, Windows `Scripts\\python.exe`)."""
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def venv_is_usable(python: Path) -> bool:
    """True when the venv's interpreter exists, starts, and is new enough."""
    if not python.exists():
        return False
    check = "import sys; sys.exit(0 if sys.version_info >= %r else 1)" % (MIN_PYTHON,)
    try:
        result = subprocess.run(
            [str(python), "-c", check],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def packaging_fingerprint() -> str:
    """Hash of everything that decides what `pip install -e .[extras]` installs."""
    digest = hashlib.sha256()
    digest.update(("extras=" + EXTRAS + "\n").encode())
    for name in PACKAGING_FILES:
        path = ROOT / name
        digest.update(("file=" + name + "\n").encode())
        digest.update(path.read_bytes() if path.is_file() else b"<absent>")
    return digest.hexdigest()


def run_quietly(argv: list[str], what: str) -> None:
    """Run a setup step with its output captured; on failure show the output and exit."""
    try:
        result = subprocess.run(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        say("%s failed: could not run %s: %s" % (what, argv[0], exc))
        sys.exit(1)
    if result.returncode != 0:
        sys.stderr.write(result.stdout)
        say("%s failed (exit code %d): %s" % (what, result.returncode, " ".join(argv)))
        sys.exit(result.returncode or 1)


def create_venv() -> None:
    """Create (or, if it is broken, recreate) `.venv/` with pip, using this interpreter."""
    argv = [sys.executable, "-m", "venv"]
    if VENV.exists():
        say("%s is not usable; recreating it" % VENV)
        argv.append("--clear")
    else:
        say("creating %s with Python %d.%d" % (VENV, sys.version_info[0], sys.version_info[1]))
    argv.append(str(VENV))
    run_quietly(argv, "creating the virtualenv")


def install_project(python: Path, fingerprint: str) -> None:
    """`pip install -e .[test,lint]` into the venv, then record the fingerprint."""
    if STAMP.exists():
        STAMP.unlink()  # an interrupted install must be redone next time
    say("installing the project and its test/lint tools into .venv (the first time takes a while)")
    started = time.monotonic()
    run_quietly(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--use-pep517",
            "-e",
            ".[" + EXTRAS + "]",
        ],
        "pip install",
    )
    STAMP.write_text(fingerprint + "\n")
    say("installed in %.0f s" % (time.monotonic() - started))


def ensure_environment() -> Path:
    """Make sure `.venv/` exists and holds the current project; return its interpreter."""
    python = venv_python()
    if not venv_is_usable(python):
        create_venv()
        if not venv_is_usable(python):
            say("the new virtualenv at %s does not start; remove it and try again" % VENV)
            sys.exit(1)
    fingerprint = packaging_fingerprint()
    try:
        installed = STAMP.read_text().strip()
    except OSError:
        installed = ""
    if installed != fingerprint:
        install_project(python, fingerprint)
    return python


def run(argv: list[str]) -> NoReturn:
    """Run a command from the repository root and exit with its exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(ROOT)
    if os.name != "nt":
        os.execv(argv[0], argv)  # replaces this process: signals and exit code pass straight
    # Windows' execv does not keep the console waiting for the child, so run it as a child.
    process = subprocess.Popen(argv)
    try:
        returncode = process.wait()
    except KeyboardInterrupt:
        returncode = process.wait()  # the child got the Ctrl+C too; let it finish cleanly
    sys.exit(returncode)


def lint(python: Path) -> int:
    """mypy --strict (files from setup.cfg's [mypy] section), ruff check, then ruff format
    --check (formatting is checked, never applied here); all three always run."""
    failed = []
    for name, argv in (
        ("mypy", [str(python), "-m", "mypy", "--strict"]),
        ("ruff check", [str(python), "-m", "ruff", "check", "."]),
        ("ruff format", [str(python), "-m", "ruff", "format", "--check", "."]),
    ):
        say("running " + " ".join(argv[2:]))
        if subprocess.call(argv, cwd=ROOT, stdin=subprocess.DEVNULL) != 0:
            failed.append(name)
    if failed:
        say("lint failed: " + ", ".join(failed))
        return 1
    say("lint passed")
    return 0


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in ("demo", "test", "lint", "bench", "setup"):
        sys.stderr.write("dev.py: unknown command %r\n\n%s" % (command, USAGE))
        return 2
    if command in ("lint", "setup") and rest:
        sys.stderr.write("dev.py: %s takes no arguments\n" % command)
        return 2
    if command == "bench" and not (ROOT / BENCH_SCRIPT).is_file():
        sys.stderr.write("dev.py: %s does not exist yet\n" % BENCH_SCRIPT)
        return 2

    python = ensure_environment()
    if command == "setup":
        say("ready: " + str(python))
        return 0
    if command == "lint":
        return lint(python)
    if command == "demo":
        run([str(python), "-m", "discord_voice", "demo"] + rest)
    if command == "test":
        run([str(python), "-m", "pytest"] + rest)
    run([str(python), str(BENCH_SCRIPT)] + rest)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.stderr.write("dev.py: interrupted\n")
        sys.exit(130)
