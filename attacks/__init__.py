"""dfl-sim plugin package: attacks, registered into ``dfl.registries.ATTACKS``.

Membership inference (``dfl.attack.MembershipAttack``): confidence, correctness, entropy, label_only,
lira (online), lira_offline, loss, modified_entropy, rmia, shadow_model, top1_threshold. Gradient inversion
(``dfl.attack.InversionAttack``): dlg, idlg, inverting_gradients.
"""

from __future__ import annotations

from attacks import (
    confidence,
    correctness,
    dlg,
    entropy,
    idlg,
    inverting_gradients,
    label_only,
    lira,
    lira_offline,
    loss,
    modified_entropy,
    rmia,
    shadow_model,
    top1_threshold,
)

__all__ = ["confidence", "correctness", "dlg", "entropy", "idlg", "inverting_gradients", "label_only", "lira",
           "lira_offline", "loss", "modified_entropy", "rmia", "shadow_model", "top1_threshold"]
