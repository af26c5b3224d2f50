"""Engines place participants and run a method on many of them; the round logic is in ``Federation``."""

from __future__ import annotations

from dfl.engines.base import Engine
from dfl.engines.serial import SerialEngine

ENGINES: dict[str, type[Engine]] = {"serial": SerialEngine}

__all__ = ["ENGINES", "Engine", "SerialEngine"]
