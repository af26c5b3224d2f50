"""``loss``: the victim's cross-entropy loss on (x, y), thresholded (Yeom et al. 2018; Song & Mittal 2021)."""

from __future__ import annotations

from attacks.metric import MetricAttack, MetricParams, loss
from dfl.registries import ATTACKS


@ATTACKS.register("loss", params=MetricParams)
class Loss(MetricAttack):
    """the victim's cross-entropy loss on (x, y), thresholded (Yeom et al. 2018; Song & Mittal 2021)."""

    signal = staticmethod(loss)
