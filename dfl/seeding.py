"""Derived random streams: every stream is a pure function of the experiment seed and a tag path.

Streams are never carried over from one round to the next, so a resumed run, a run on another engine
or a run with participants placed in another order draws exactly the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch

# Tags that name the streams; fixed integers so that adding a stream never shifts another.
MODEL_INIT = 10
LOCAL_TRAIN = 11
EVAL_SUBSET = 12
QUERY = 13
TRAIN_DEFENSE = 14


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
