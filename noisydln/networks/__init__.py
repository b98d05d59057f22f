"""Network families the engine runs: what each provides to the rules, the recorder and results.

`SimConfig(network=...)` picks one: "diagonal" (`params: [depth, d]`, the paper's network, the
default) or "dense" (`params = (W_1, ..., W_L)`, full matrices with hidden `widths`). A family
is a `Network` (see `noisydln.networks.base` for what it must provide); a new family is one
module with a `Network` subclass, added to `FAMILIES`.
"""

import functools

from noisydln import _checks
from noisydln.networks.base import Network as Network
from noisydln.networks.dense import Dense as Dense
from noisydln.networks.diagonal import Diagonal as Diagonal

FAMILIES: dict[str, type[Network]] = {"diagonal": Diagonal, "dense": Dense}
DIAGONAL = Diagonal()  # the rules' default


def get(name: str, widths=None) -> Network:
    """The family `name` with its static shape: `get("dense", (5, 3))`, `get("diagonal")`.

    Raises a ValueError naming `network` or `widths` when they do not fit.

    Examples:
      >>> get("dense", [5, 3]).depth, get("diagonal") == DIAGONAL
      (3, True)
    """
    if not isinstance(name, str) or name not in FAMILIES:
        raise ValueError(f"network must be one of {sorted(FAMILIES)}, got {_checks.describe(name)}")
    return FAMILIES[name].from_options(widths=widths)


@functools.cache
def all_quantities() -> tuple[str, ...]:
    """Every quantity some family records, in family order (for the spec loader's check)."""
    names = [q for family in (DIAGONAL, Dense((1,))) for q in family.all_quantities]
    return tuple(dict.fromkeys(names))
