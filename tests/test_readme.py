"""README.rst is what PyPI and a newcomer read first: it must render cleanly (docutils, warnings
are errors) and name only commands, sections and examples that exist."""

from __future__ import annotations

import io
import re
from pathlib import Path

import docutils.core
import pytest
from docutils.writers.null import Writer

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["README.rst", "bench/RESULTS.rst"])
def test_renders_without_warnings(name: str) -> None:
    warnings = io.StringIO()
    docutils.core.publish_string(
        (ROOT / name).read_text(encoding="utf-8"),
        writer=Writer(),
        settings_overrides={"warning_stream": warnings, "report_level": 2, "halt_level": 5},
    )
    assert warnings.getvalue() == ""


def test_the_examples_it_names_exist() -> None:
    paragraph = next(p for p in README.split("\n\n") if "Runnable scripts are in" in p)
    named = set(re.findall(r"``(\w+\.py)``", paragraph)) | set(
        re.findall(r"examples/(\w+\.py)", README)
    )
    assert len(named) >= 5, named
    for name in named:
        assert (ROOT / "examples" / name).is_file(), name


def test_the_quick_start_commands_are_the_ones_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in ("python3 dev.py test", "python3 dev.py lint"):
        assert command in README and command in ci
    assert "python3 dev.py demo" in README
