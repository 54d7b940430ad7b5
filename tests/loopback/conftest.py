"""Fixtures for end-to-end tests: a fake Discord and a connected `Gateway` + `Voice` on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from discord_voice import Gateway, IdentifyLimiter, Voice
from discord_voice.testing import FakeDiscord
from tests.timeouts import LONG

GUILD = 41771983423143937
CHANNEL = 127121515262115840


def UNSPACED() -> IdentifyLimiter:
    """An identify limiter that lets every Identify go at once: for tests of recovery ladders
    against a fake that does not limit Identifies (its default), not of identify pacing."""
    return IdentifyLimiter(interval=0.0)


@dataclass
class World:
    fake: FakeDiscord
    gateway: Gateway
    voice: Voice


MakeWorld = Callable[..., World]
"""The `make_world` fixture's type: ``make_world(voice_options=None, **fake_options)``."""


@pytest.fixture
def make_world() -> Iterator[MakeWorld]:
    """Factory: ``make_world(**fake_options)`` -> a started World, torn down after the test."""
    worlds: list[World] = []
    fakes: list[FakeDiscord] = []

    def make(voice_options: dict[str, Any] | None = None, **options: object) -> World:
        fake = FakeDiscord(**options)  # type: ignore[arg-type]
        fake.start()
        fakes.append(fake)
        gateway = Gateway(fake.token, url=fake.gateway_url)
        gateway.connect(timeout=LONG)
        world = World(fake, gateway, Voice(gateway, **(voice_options or {})))
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        world.voice.close()
        world.gateway.close()
    for fake in fakes:
        fake.close()


@pytest.fixture
def world(make_world: MakeWorld) -> World:
    return make_world()
