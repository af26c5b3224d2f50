"""The federation: participants, the population that builds them, the engine contract and the round loop.

``participant`` is one node's model, optimizer and data; ``population`` builds participants from the
config (data, splits, seeds, defenses); ``engine`` is the contract an engine fulfils (the bulk
operations the loop needs); ``rounds`` holds :class:`Federation`, whose ``run()`` is the one round loop
with checkpoints, fault recovery, observers, progress and stop-after; ``flower_client`` makes a Flower
``NumPyClient`` a participant. It knows no attack (observers are handed in) and no Ray (engines are).
"""

from dfl.federation.rounds import Federation, Observer

__all__ = ["Federation", "Observer"]
