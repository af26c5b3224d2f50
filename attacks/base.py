"""The attack interface, defined in the core (``dfl.attack``) so that the scorer never imports plugins."""

from __future__ import annotations

from dfl.attack import AdversaryView, AttackResult, Labelled, MembershipAttack, Outputs, probabilities

__all__ = ["AdversaryView", "AttackResult", "Labelled", "MembershipAttack", "Outputs", "probabilities"]
