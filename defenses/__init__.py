"""dfl-sim plugin package: defenses, registered into ``dfl.registries.DEFENSES``.

Query-time (``dfl.defense.QueryDefense``): augmixcloak, confidence_masking, confidence_regularization,
confidence_perturbation, image_perturbation, memguard. Training-time (``dfl.defense.TrainingDefense``):
adamixup, mixup, label_smoothing, weight_penalty (L1/L2), dp_sgd (Opacus), defensive_augmentation. Share-time
(``dfl.defense.ShareDefense``, the update a node shares): update_pruning, update_noise. Dropout is
``model.params.dropout``.
"""

from __future__ import annotations

from defenses import (
    adamixup,
    augmixcloak,
    confidence_masking,
    confidence_perturbation,
    confidence_regularization,
    defensive_augmentation,
    dp_sgd,
    image_perturbation,
    label_smoothing,
    memguard,
    mixup,
    share_time,
    weight_penalty,
)

__all__ = ["adamixup", "augmixcloak", "confidence_masking", "confidence_perturbation", "confidence_regularization",
           "defensive_augmentation", "dp_sgd", "image_perturbation", "label_smoothing", "memguard", "mixup",
           "share_time", "weight_penalty"]
