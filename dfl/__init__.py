"""dfl-sim: a simulated decentralized federated learning testbed for privacy research."""

from __future__ import annotations

__version__ = "0.2.0"
