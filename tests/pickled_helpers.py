"""Classes that training code pickles into checkpoints; `torch.load(weights_only=True)` refuses them.

test_cli.py saves checkpoints holding these, so they must live in a module that the `lgt`
subprocess can import (tests/ on PYTHONPATH) when the user passes --trust-pickle.
"""

from __future__ import annotations

import collections
import dataclasses


class TaggedStateDict(collections.OrderedDict):
    """A state_dict subclass, as some frameworks save instead of a plain OrderedDict."""


@dataclasses.dataclass
class TrainState:
    """Training state saved beside the weights."""

    epoch: int
    lr: float
