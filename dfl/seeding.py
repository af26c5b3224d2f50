"""Derived random streams: every stream is a pure function of the experiment seed and a tag path.

Streams are never carried over from one round to the next, so a resumed run, a run on another engine
or a run with participants placed in another order draws exactly the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch

# Every tag that names a stream, in one table; fixed integers so that adding a stream never shifts
# another. A stream is ``default_rng([seed, TAG, ...])`` or a seed ``derive_seed(seed, TAG, ...)``; the
# two never coincide, but a new stream takes a tag of its own. Data splits are the exception: their
# streams are named by strings (``dfl.data.splits.derive_rng``).
TOPOLOGY = 1            # default_rng([seed, 1, epoch]): the base graph of a topology epoch
LINK_FAILURE = 2        # default_rng([seed, 2, round]): which edges are down in a round
ATTACKER_PLACEMENT = 3  # default_rng([seed, 3]): ``attackers: k`` placed as node ids
MODEL_INIT = 10         # the initial model every node starts from
LOCAL_TRAIN = 11        # (node, round): a node's local batches
EVAL_SUBSET = 12        # the fixed evaluation subset of each node and split
QUERY = 13              # (node, query count) / (node, round, attacker + 1): randomness of query-time defenses
TRAIN_DEFENSE = 14      # (node, round): training-time defenses (DP-SGD's noise is sub-tag DP_NOISE)
SHARE_NOISE = 15        # (node, round): update_noise's Gaussian noise on the shared update
ADVERSARY_VIEW = 20     # default_rng([seed, 20, attacker, round, ...]): an attack's own draws (AdversaryView.rng)
AUGMIXCLOAK_TUNE = 20   # derive_seed(seed, 20, node): AugMixCloak's tuning sample (a seed, not a generator path)
MIA_SAMPLE = 21         # default_rng([seed, 21, round, attacker, victim]): members and non-members scored
REFERENCE = 30          # the recognisability classifier's initialisation and augmentation
INVERSION = 40          # (attack, round, attacker, victim): an inversion attack's random initialisation
SEARCH = 50             # the augmentation search's samples, models and reconstructions
MEMGUARD_FIT = 0x4D47   # (node): MemGuard's own membership classifier ("MG")

# Sub-tags under a stream above.
DP_NOISE = 1            # under (TRAIN_DEFENSE, node, round): DP-SGD's Gaussian noise
LABEL_ONLY_NOISE = 400  # under AdversaryView.rng: the label-only attack's perturbations


def derive_seed(seed: int, *tags: int) -> int:
    """A 63-bit seed from ``(seed, *tags)`` through numpy's ``SeedSequence`` (stable across processes)."""
    state = np.random.SeedSequence([seed, *tags]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def torch_generator(seed: int, *tags: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed`."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *tags))
    return g


def numpy_rng(seed: int, *tags: int) -> np.random.Generator:
    """A numpy ``Generator`` for ``(seed, *tags)``."""
    return np.random.default_rng([seed, *tags])
