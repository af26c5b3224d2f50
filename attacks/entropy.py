"""``entropy``: the entropy of the victim's prediction, thresholded: members get sharper predictions (Song & Mittal 2021)."""

from __future__ import annotations

from attacks.metric import MetricAttack, MetricParams, entropy
from dfl.registries import ATTACKS


@ATTACKS.register("entropy", params=MetricParams)
class Entropy(MetricAttack):
    """the entropy of the victim's prediction, thresholded: members get sharper predictions (Song & Mittal 2021)."""

    signal = staticmethod(entropy)
