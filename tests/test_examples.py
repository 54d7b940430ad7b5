"""The examples stay runnable: the offline one runs, the others at least import cleanly."""

from __future__ import annotations

import importlib.util
import runpy
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_offline_example_passes_against_the_fake() -> None:
    load("test_with_fake_discord").test_bot_plays_every_frame_in_order()


def test_adapter_example_satisfies_the_main_gateway_protocol() -> None:
    runpy.run_path(str(EXAMPLES / "own_gateway_adapter.py"))


@pytest.mark.parametrize("name", ["play_ogg_opus", "play_tone"])
def test_real_discord_examples_import(name: str) -> None:
    module = load(name)
    assert callable(module.main) and module.__doc__ and "DISCORD_TOKEN" in module.__doc__
