"""Discord ids (snowflakes): checked once at the public API, then carried as decimal strings."""

from __future__ import annotations

__all__ = ["snowflake"]


def snowflake(value: int | str, what: str) -> str:
    """Validate an id given as int or str and return it as Discord sends it (a decimal string)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{what} must be an int or a str, got {type(value).__name__}")
    text = str(value)
    if not text.isdigit() or not 0 < int(text) < 2**64:
        raise ValueError(f"{what} must be a positive 64-bit integer id, got {value!r}")
    return str(int(text))
