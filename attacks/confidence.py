"""``confidence``: the victim's probability of the true label, thresholded (Song & Mittal 2021)."""

from __future__ import annotations

from attacks.metric import MetricAttack, MetricParams, confidence
from dfl.registries import ATTACKS


@ATTACKS.register("confidence", params=MetricParams)
class Confidence(MetricAttack):
    """the victim's probability of the true label, thresholded (Song & Mittal 2021)."""

    signal = staticmethod(confidence)
