"""Derived random streams: every stream is a pure function of the experiment seed and a tag path.

Streams are never carried over from one round to the next, so a resumed run, a run on another engine
or a run with participants placed in another order draws exactly the same numbers.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
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
DP_AUDIT = 22           # derive_seed(seed, 22, round, attacker, victim, attack index): the DP audit's half-split
EVASION = 23            # (round, attacker, victim, attack index): an adaptive attacker's query transforms
REFERENCE = 30          # the recognisability classifier's initialisation and augmentation
INVERSION = 40          # (attack, round, attacker, victim): an inversion attack's random initialisation
SEARCH = 50             # the augmentation search's samples, models and reconstructions
ASYNC_SCHEDULE = 60     # default_rng([seed, 60, 0]): per-node speeds; ([seed, 60, 1, node, iteration]): push targets
MEMGUARD_FIT = 0x4D47   # (node): MemGuard's own membership classifier ("MG")

# Sub-tags under a stream above.
DP_NOISE = 1            # under (TRAIN_DEFENSE, node, round): DP-SGD's Gaussian noise
LABEL_ONLY_NOISE = 400  # under AdversaryView.rng: the label-only attack's perturbations


def derive_seed(seed: int, *tags: int) -> int:
    """A 63-bit seed from ``(seed, *tags)`` through numpy's ``SeedSequence`` (stable across processes)."""
    state = np.random.SeedSequence([seed, *tags]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def derive_seeds(seed: int, *tags: int | npt.ArrayLike) -> list[int]:
    """:func:`derive_seed` for many tag paths at once: ``tags`` are integers or equal-length integer
    arrays, and entry ``i`` of the result is ``derive_seed(seed, *(tag[i] or tag))``.

    numpy's ``SeedSequence`` (O'Neill's ``seed_seq_fe``: a 4-word pool mixed with multiply-xorshift
    hashes, then hashed out into the state words) vectorised over the paths in uint32 arithmetic, so
    that a batched engine derives 10,000 nodes' streams in a few array operations instead of 10,000
    ``SeedSequence`` objects. Tested against :func:`derive_seed`; paths with a value outside
    ``[0, 2**32)`` (which ``SeedSequence`` spreads over several words) take :func:`derive_seed` itself.
    """
    columns = [np.asarray(t, dtype=object if isinstance(t, int) and not 0 <= t < 2**32 else None)
               for t in (seed, *tags)]
    size = max((c.size for c in columns if c.ndim), default=1)
    if any(c.ndim and c.size != size for c in columns):
        raise ValueError(f"tag arrays must have one length, got {[c.size for c in columns if c.ndim]}")
    rows = [np.broadcast_to(c, (size,)) for c in columns]
    if any(c.dtype == object or c.dtype.kind not in "iu" or c.min(initial=0) < 0 or c.max(initial=0) >= 2**32
           for c in rows):
        return [derive_seed(seed, *(int(np.asarray(t).reshape(-1)[i] if np.ndim(t) else t) for t in tags))
                for i in range(size)]
    entropy = np.stack([c.astype(np.uint32) for c in rows])  # (words, size): one word per value below 2**32
    with np.errstate(over="ignore"):
        const = np.uint32(_INIT_A)

        def hashmix(value: np.ndarray) -> np.ndarray:
            nonlocal const
            value = value ^ const
            const = np.uint32(const * np.uint32(_MULT_A))
            value = value * const
            return value ^ (value >> np.uint32(16))

        def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            result = np.uint32(_MIX_MULT_L) * x - np.uint32(_MIX_MULT_R) * y
            return result ^ (result >> np.uint32(16))

        zero = np.zeros(size, dtype=np.uint32)
        pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(4)]
        for src in range(4):
            for dst in range(4):
                if src != dst:
                    pool[dst] = mix(pool[dst], hashmix(pool[src]))
        for src in range(4, len(entropy)):
            for dst in range(4):
                pool[dst] = mix(pool[dst], hashmix(entropy[src]))
        const_b, words = np.uint32(_INIT_B), []
        for i in range(2):  # generate_state(2, uint32)
            value = pool[i] ^ const_b
            const_b = np.uint32(const_b * np.uint32(_MULT_B))
            value = value * const_b
            words.append(value ^ (value >> np.uint32(16)))
    return ((words[0].astype(np.uint64) << np.uint64(31)) ^ words[1].astype(np.uint64)).tolist()


# numpy's SeedSequence constants (bit_generator.pyx)
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715


def torch_generator(seed: int, *tags: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed`."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *tags))
    return g


def numpy_rng(seed: int, *tags: int) -> np.random.Generator:
    """A numpy ``Generator`` for ``(seed, *tags)``."""
    return np.random.default_rng([seed, *tags])
