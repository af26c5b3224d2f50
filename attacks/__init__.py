"""dfl-sim plugin package: attacks (membership inference), registered into ``dfl.registries.ATTACKS``."""

from __future__ import annotations

from attacks import confidence, correctness, entropy, loss, modified_entropy, top1_threshold

__all__ = ["confidence", "correctness", "entropy", "loss", "modified_entropy", "top1_threshold"]
