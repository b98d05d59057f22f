"""The diagonal family: `params: [depth, d]`, `beta = w_1 * ... * w_L` (docs/theory.md s1).

Wraps `noisydln.model`, `noisydln.theory` and `noisydln.quantities` unchanged: the engine's
numbers for this family are those it had before there were families.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from noisydln import _checks, model, theory
from noisydln.networks.base import Network
from noisydln.problem import Problem


def _quantities():
    """`noisydln.quantities`, imported when first needed (it imports the rules, which import
    the families)."""
    from noisydln import quantities  # noqa: PLC0415

    return quantities


@dataclasses.dataclass(frozen=True)
class Diagonal(Network):
    """Diagonal linear networks: row `l` of `params: [depth, d]` is the diagonal of `W_l`."""

    name: ClassVar[str] = "diagonal"
    step_quantities: ClassVar[tuple[str, ...]] = ("imbalance_step_residual",)

    @classmethod
    def from_options(cls, *, widths=None) -> "Diagonal":
        if widths is not None:
            raise ValueError(
                'widths: only a dense network has hidden widths (network = "diagonal"), got '
                f"{_checks.describe(widths)}"
            )
        return cls()

    @property
    def quantities(self) -> tuple[str, ...]:
        return _quantities().QUANTITIES

    @property
    def extra_quantities(self) -> tuple[str, ...]:
        return _quantities().EXTRA_QUANTITIES

    def end_to_end(self, params: jax.Array) -> jax.Array:
        return model.end_to_end(params)

    def pullback(self, params: jax.Array, beta_grad: jax.Array) -> jax.Array:
        """`beta_grad[i] prod_{k != l} w_{k,i}`, `[depth, d]`."""
        return beta_grad[None, :] * model.products_except_one(params)

    def grad(self, params: jax.Array, problem: Problem) -> jax.Array:
        return model.grad(params, problem)

    def expected_grad(self, params: jax.Array, problem: Problem, sigma: ArrayLike) -> jax.Array:
        return theory.expected_grad(params, problem, sigma)

    def num_layers(self, params: jax.Array) -> int:
        return params.shape[0]

    def layer_mask(self, params: jax.Array, layer: jax.Array) -> jax.Array:
        """`[depth, 1]`: 1 on row `layer`."""
        return (jnp.arange(params.shape[0]) == layer).astype(params.dtype)[:, None]

    def check_depth(self, depth) -> int:
        return 2 if depth is None else _checks.check_depth(depth)

    def check_init(self, init, depth: int) -> float | tuple:
        """A finite real scale, or `[depth, d]` rows as nested tuples of floats."""
        dtype = _checks.check_real("init", init)
        if np.ndim(init) == 0:
            return _checks.as_float("init", init)
        array = np.asarray(init, dtype=dtype)
        if array.ndim != 2 or array.shape[0] != depth or array.shape[1] < 1:
            raise ValueError(
                f"init must be a scale or have shape [depth, d] = ({depth}, d), got {array.shape}"
            )
        _checks.check_finite("init", array)
        return tuple(tuple(float(v) for v in row) for row in array)

    def check_init_seed(self, init_seed, init) -> None:
        if init_seed is not None:
            raise ValueError(
                "init_seed: the diagonal network starts at init * ones((depth, d)) or at given "
                f"rows, never at random; leave it unset, got {_checks.describe(init_seed)}"
            )
        return None

    def base_init(self, init, init_seed, depth: int, d: int, dtype) -> tuple[jax.Array, float]:
        """`(rows, 1)` for given rows, else `(ones((depth, d)), init)`."""
        if isinstance(init, tuple):
            base = jnp.asarray(init, dtype)
            _checks.check_shape("init", base, (depth, d), "[depth, d]")
            return base, 1.0
        return jax.device_put(np.ones((depth, d), dtype)), float(init)

    def num_params(self, depth: int, d: int) -> int:
        return depth * d

    def check_quantities(self, quantities: tuple[str, ...], depth: int) -> None:
        super().check_quantities(quantities, depth)
        if "imbalance_step_residual" in quantities and depth != 2:
            raise ValueError("imbalance_step_residual uses the depth-2 factor rho: set depth=2")

    def record(self, params, problem, hyper, quantities, next_params=None, memory=None):
        """`noisydln.quantities.record` (its memory: the Ritz vector of `top_eigenvalue`)."""
        return _quantities().record(params, problem, hyper, quantities, next_params, memory)

    def describe(self, name: str) -> tuple[str, str]:
        return _quantities().DESCRIPTIONS[name]

    def dims(self, name: str, ndim: int) -> tuple[str, ...]:
        """`[d]` quantities are per `coord`, `imbalance: [depth - 1, d]` per `layer, coord`."""
        return {0: (), 1: ("coord",), 2: ("layer", "coord")}[ndim]

    def layer_coordinate(self, depth: int) -> np.ndarray:
        """`2..depth`: the imbalance `w_l^2 - w_1^2` of layer l."""
        return np.arange(2, depth + 1)
