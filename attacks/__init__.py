"""dfl-sim plugin package: attacks (membership inference), registered into ``dfl.registries.ATTACKS``."""

from __future__ import annotations

from attacks import (
    confidence,
    correctness,
    entropy,
    label_only,
    lira_offline,
    loss,
    modified_entropy,
    shadow_model,
    top1_threshold,
)

__all__ = ["confidence", "correctness", "entropy", "label_only", "lira_offline", "loss", "modified_entropy",
           "shadow_model", "top1_threshold"]
