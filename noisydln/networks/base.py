"""What a network family provides to the training rules, the recorder and the experiment layer.

A family is a frozen, hashable description of a network's static shape (the diagonal family
has none beyond the depth in `SimConfig`; the dense one has its widths): the compiled grid
chunk is cached on it. Its parameters are a pytree of float arrays (`[depth, d]` for the
diagonal family, a tuple of matrices for the dense one) and every method acts on ONE
parameter pytree; batch with `jax.vmap`.
"""

import abc
from typing import ClassVar

import jax
import numpy as np
from jax.typing import ArrayLike

from noisydln.model import residual
from noisydln.problem import Problem

Params = object  # a pytree of float arrays: `[depth, d]`, or a tuple of matrices


class Network(abc.ABC):
    """The seam between a network family and the engine.

    The rules need `end_to_end`, `pullback` (and `grad`, `expected_grad`, `layer_mask`);
    `SimConfig` needs `check_depth`, `check_init`, `check_init_seed`, `base_init`,
    `num_params`; the recorder needs `quantities`, `extra_quantities`, `step_quantities`,
    `check_quantities`, `record` (whose memory the record scan carries to the trajectory's next
    record); the results file needs `describe`, `dims` and `layer_coordinate`. A new family is
    one module implementing these, registered in `noisydln.networks.FAMILIES`.
    """

    name: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def from_options(cls, *, widths=None) -> "Network":
        """The family with the static options of a `SimConfig` (`widths`), or a ValueError
        naming the option that does not fit."""

    # ---------------------------------------------------------------- the network, for the rules

    @abc.abstractmethod
    def end_to_end(self, params: Params) -> jax.Array:
        """The end-to-end vector `beta`, `[d]`."""

    @abc.abstractmethod
    def pullback(self, params: Params, beta_grad: jax.Array) -> Params:
        """The gradient in the parameters of a function `f(beta)` whose gradient in `beta` is
        `beta_grad: [d]`: `J(params)^T beta_grad`, like params."""

    def grad(self, params: Params, problem: Problem) -> Params:
        """The gradient of the loss `(1/n) ||y - X beta||^2`, like params: the pullback of
        `dL/dbeta = -r`, `r = 2 (b - Sigma beta)`."""
        return self.pullback(params, -residual(self.end_to_end(params), problem))

    @abc.abstractmethod
    def expected_grad(self, params: Params, problem: Problem, sigma: ArrayLike) -> Params:
        """`grad L_R = E grad L(params + sigma xi)`, `xi` i.i.d. N(0, 1) on every parameter."""

    @abc.abstractmethod
    def num_layers(self, params: Params) -> int:
        """The depth L of `params` (static)."""

    @abc.abstractmethod
    def layer_mask(self, params: Params, layer: jax.Array) -> Params:
        """1 on layer `layer` (0-based, traced), 0 elsewhere: a pytree broadcasting against
        params (`one_layer_sam` perturbs `params + sigma * mask * xi`)."""

    # ---------------------------------------------------------------- shapes and starts

    @abc.abstractmethod
    def check_depth(self, depth) -> int:
        """The depth as an int (None: the family's default), or a ValueError naming `depth`."""

    @abc.abstractmethod
    def check_init(self, init, depth: int) -> float | tuple:
        """`init` as a float scale or a hashable nested tuple, or a ValueError naming `init`."""

    @abc.abstractmethod
    def check_init_seed(self, init_seed, init) -> int | None:
        """The seed of a random start (None where the start is not random), or a ValueError
        naming `init_seed`."""

    @abc.abstractmethod
    def base_init(self, init, init_seed, depth: int, d: int, dtype) -> tuple[Params, float]:
        """`(base, scale)`: the initial parameters are `scale * base` (grid `init_scales`
        replace the scale); raises a ValueError naming `init` if it does not fit `d`."""

    @abc.abstractmethod
    def num_params(self, depth: int, d: int) -> int:
        """Numbers in one parameter pytree."""

    # ---------------------------------------------------------------- what is recorded

    quantities: ClassVar[tuple[str, ...]]  # recorded by default
    extra_quantities: ClassVar[tuple[str, ...]]  # on request
    step_quantities: ClassVar[tuple[str, ...]]  # those that need the next step's parameters

    @property
    def all_quantities(self) -> tuple[str, ...]:
        return self.quantities + self.extra_quantities

    def record_temporaries(self, quantities: tuple[str, ...], d: int) -> int:
        """Numbers per trajectory that computing a record of `quantities` keeps live besides the
        state and the values (the memory estimate, `noisydln.plan`): none by default."""
        return 0

    def check_quantities(self, quantities: tuple[str, ...], depth: int) -> None:
        """Raises a ValueError naming the first quantity this family cannot record."""
        for name in quantities:
            if name not in self.all_quantities:
                raise ValueError(
                    f"{name} is not a quantity of the {self.name} network (its quantities: "
                    f"{', '.join(self.all_quantities)})"
                )

    @abc.abstractmethod
    def record(
        self, params: Params, problem: Problem, hyper, quantities, next_params=None, memory=None
    ) -> tuple[dict[str, jax.Array], object]:
        """`(values, memory)`: the recorded `quantities` of one state (`hyper`: the cell's
        `algorithms.Hyper`; `next_params`: the parameters after the step the run takes next,
        for `step_quantities`), and what the trajectory's next record needs from this one.

        `memory` is what the previous record of the same trajectory returned, None at the
        first: a pytree of arrays whose structure and shapes must not change after the first
        record (the record scan carries it), empty (`{}`) when nothing is carried. The diagonal
        family carries the top Ritz vector of `top_eigenvalue` (a warm Lanczos start)."""

    @abc.abstractmethod
    def describe(self, name: str) -> tuple[str, str]:
        """`(shape, meaning)` of a quantity, written into result files."""

    @abc.abstractmethod
    def dims(self, name: str, ndim: int) -> tuple[str, ...]:
        """The named dimensions of one record of a quantity (`beta: ("coord",)`)."""

    @abc.abstractmethod
    def layer_coordinate(self, depth: int) -> np.ndarray:
        """The labels of the `layer` dimension of the results."""
