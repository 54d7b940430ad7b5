"""Tests of discord_voice.audio: the sources, the probe and the player."""
