"""The adversary: what attackers do with what they see, and how it is scored.

``membership`` runs membership-inference attacks (``kind: mia`` records), ``inversion`` gradient
inversion (``kind: inversion``), ``gradients`` the pieces inversion attacks share, ``reference`` the
recognisability classifier. When an attack runs and whom it may target is the attack contract's
(:func:`dfl.attack.scheduled`, :func:`dfl.attack.round_targets`, checked at validate time by
:func:`dfl.attack.target_errors`).
:func:`observers` builds what a config asks for; the round loop hands them every round's shared states.
The ground truth stays here, with the scorers: attacks (``attacks/``) see only an ``AdversaryView``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfl.config import ExperimentConfig
from dfl.deprecation import moved


def observers(cfg: ExperimentConfig, population: Any, plots: Path | None, signals: Path | None = None,
              saved: Path | None = None) -> list[Any]:
    """The round observers ``cfg`` asks for: a ``StateSaver`` with ``output.save_shared`` (into ``saved``),
    a membership ``Adversary`` if any attack is a membership attack (its per-sample exports go to
    ``signals``), an ``Inverter`` if any is an inversion (its image grids go to ``plots``)."""
    # here, not at the top: importing the package for observers() alone keeps the scorers' imports lazy
    from dfl.adversary.inversion import Inverter, is_inversion
    from dfl.adversary.membership import Adversary
    from dfl.adversary.saved import StateSaver

    found: list[Any] = []
    if cfg.output.save_shared and saved is not None:
        found.append(StateSaver(cfg, saved))
    if cfg.attacks and not all(is_inversion(a.name) for a in cfg.attacks):
        found.append(Adversary(cfg, population, signals))
    if any(is_inversion(a.name) for a in cfg.attacks):
        found.append(Inverter(cfg, population, plots))
    return found


__getattr__ = moved(__name__, "dfl.attack", "dfl.metrics.membership", "dfl.adversary.membership")
