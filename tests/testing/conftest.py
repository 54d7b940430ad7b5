"""Fixtures for the fake's own tests (the suite-wide thread-leak check is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from discord_voice.testing import FakeDiscord


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    with FakeDiscord(dave=False) as running:
        yield running
