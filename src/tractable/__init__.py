"""tractable: research on how networks learn, in PyTorch.

Method families (each in its own subpackage):

* :mod:`tractable.tract` -- TrAct first-layer gradient preconditioning (arXiv 2410.23970).
* :mod:`tractable.feedback` -- credit assignment without weight transport: feedback alignment (layer and block),
  direct feedback alignment, sign symmetry, Kolen-Pollack, and the FA evaluation protocol.
* :mod:`tractable.models`, :mod:`tractable.data`, :mod:`tractable.train` -- the runner's building blocks.
"""
from tractable.tract import (
    TrAct,
    attach,
    is_tract,
    plain_gradients,
    precondition_,
    remove,
    unwrap,
)

__version__ = "0.1.0"

__all__ = [
    "TrAct",
    "attach",
    "is_tract",
    "plain_gradients",
    "precondition_",
    "remove",
    "unwrap",
    "__version__",
]
