"""dfl-sim plugin package: defenses, registered into ``dfl.registries.DEFENSES``."""

from __future__ import annotations

from defenses import confidence_masking, confidence_perturbation, confidence_regularization, image_perturbation

__all__ = ["confidence_masking", "confidence_perturbation", "confidence_regularization", "image_perturbation"]
