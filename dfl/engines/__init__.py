"""Engines place participants and run a method on many of them; the round logic is in ``Federation``."""

from __future__ import annotations

from dfl.engines.serial import SerialEngine
from dfl.federation.engine import Engine


def engine_class(name: str) -> type[Engine]:
    """The engine class for ``engine.name`` (Ray is imported only when asked for)."""
    if name == "ray":
        from dfl.engines.ray import RayEngine

        return RayEngine
    return SerialEngine


__all__ = ["Engine", "SerialEngine", "engine_class"]
