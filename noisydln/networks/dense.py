"""The dense family: `params = (W_1 [h_1, d], ..., W_L [1, h_{L-1}])`, `beta^T = W_L ... W_1`.

Wraps `noisydln.dense` (docs/dense.md): the rules perturb every entry of every matrix, the
recorder records the imbalances `D_l = W_{l+1}^T W_{l+1} - W_l W_l^T` of the hidden layers and
the noise-weighted gaps that move them (docs/dense.md s3) by their Frobenius norms and traces,
and the one-step residual of the imbalance law entry by entry.

A scale `init` starts at `scale * base`, `base = dense.init_params(jax.random.key(init_seed), d,
widths, 1.0)` drawn in float64 and rounded to the run's dtype (i.i.d. N(0, 1) entries, layer
`l` from `jax.random.split(key, L)[l - 1]`; `init_seed` 0 unless set): the same start for every
seed and cell, `init_scales` multiplying it, and the same numbers in float32 and float64 runs
up to rounding. A tuple of matrices is the start itself (times the init scale).
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from noisydln import _checks, dense, eigen, linalg
from noisydln.model import pairwise_sum
from noisydln.networks.base import Network
from noisydln.problem import Problem

QUANTITIES = (
    "beta",
    "imbalance_norm",
    "imbalance_trace",
    "weighted_gap_norm",
    "weighted_gap_trace",
    "loss",
    "expected_loss",
    "sharpness",
    "hessian_trace",
)
EXTRA_QUANTITIES = ("imbalance_drift_residual", "top_eigenvalue")  # and the beta diagnostics
# recorded from beta or by the Lanczos kernel alone (no moment recursion, no [h, h] products)
CHEAP_QUANTITIES = ("beta", "loss", "top_eigenvalue", "l1_norm", "support_size")
CHEAP_QUANTITIES += ("distance_to_limit", "test_loss")
# live copies of the block sums a record's products keep (`record_temporaries`): against XLA's
# memory analysis of one chunk of float32 trajectories with the default quantities (conftest's
# `_xla_chunk_bytes`), the whole chunk's estimate is 1.1 to 2.1 times XLA's bytes with 1 copy
# (d, widths = 100, (100,) in 256 trajectories; 30, (20,); 40, (30, 20); 50, (100,) in 1024)
PRODUCT_COPIES = 1


def _quantities():
    """`noisydln.quantities` (its beta diagnostics and their descriptions), imported when first
    needed: it imports the rules, which import the families."""
    from noisydln import quantities  # noqa: PLC0415

    return quantities


_GAP = (
    "tr(N_{l-1}) W_{l+1}^T G_{l+1} W_{l+1} - tr(G_{l+1}) W_l N_{l-1} W_l^T at the cell's sigma "
    "(depth 2: tr(Sigma) W_2^T W_2 - W_1 Sigma W_1^T), which moves D_l at the rate -4 sigma^2 "
    "times it (docs/dense.md s3)"
)
DESCRIPTIONS = {
    "beta": ("[d]", "end-to-end vector beta = (W_L ... W_1)^T"),
    "imbalance_norm": (
        "[depth - 1]",
        "Frobenius norm of the imbalance D_l = W_{l+1}^T W_{l+1} - W_l W_l^T of hidden layer l",
    ),
    "imbalance_trace": ("[depth - 1]", "tr D_l = ||W_{l+1}||_F^2 - ||W_l||_F^2"),
    "weighted_gap_norm": ("[depth - 1]", f"Frobenius norm of the noise-weighted gap {_GAP}"),
    "weighted_gap_trace": ("[depth - 1]", f"trace of the noise-weighted gap {_GAP}"),
    "loss": ("[]", "training loss (1/n) ||y - X beta||^2"),
    "expected_loss": ("[]", "expected loss L_R = E L(W + sigma xi) at the cell's sigma"),
    "sharpness": ("[]", "average sharpness L_R - L at the cell's sigma"),
    "hessian_trace": ("[]", "trace of the Hessian of L"),
    "imbalance_drift_residual": (
        "[sum_l h_l^2]",
        "D_l(next) - D_l - eta dD_l/dt (dD_l/dt = -4 sigma^2 times the noise-weighted gap) "
        "entry by entry, each hidden layer's matrix row-major, layer after layer: mean "
        "O(eta^2) for stochastic_sam (docs/dense.md s3)",
    ),
}
DIMS = {
    "beta": ("coord",),
    "imbalance_norm": ("layer",),
    "imbalance_trace": ("layer",),
    "weighted_gap_norm": ("layer",),
    "weighted_gap_trace": ("layer",),
    "imbalance_drift_residual": ("imbalance_entry",),
}


def frobenius(matrix: jax.Array) -> jax.Array:
    """`||matrix||_F`, a fixed-order sum (`pairwise_sum`), scalar."""
    return jnp.sqrt(pairwise_sum(jnp.reshape(matrix, (-1,)) ** 2))


def _per_layer(matrices, reduce) -> jax.Array:
    """`[reduce(m) for m in matrices]` stacked, `[depth - 1]`."""
    return jnp.stack([reduce(m) for m in matrices])


def imbalance_drift_residual(params, next_params, problem: Problem, hyper) -> jax.Array:
    """`D_l(next) - D_l(params) - eta dD_l/dt(params)` for every hidden layer, flattened and
    concatenated, `[sum_l h_l^2]` (docs/dense.md s3).

    One step `W' = W - eta g` with `E g = grad L_R` (stochastic SAM) changes `D_l` by
    `eta dD_l/dt` (the flow rate is linear in the gradient) plus `eta^2 (g_{l+1}^T g_{l+1} -
    g_l g_l^T)`: the residual's mean is `O(eta^2)`, entry by entry at most `eta^2
    E[||g_{l+1}||_F^2 + ||g_l||_F^2]`.
    """
    rates = dense.imbalance_flow_rate(params, problem, hyper.sigma)
    after, before = dense.imbalance(next_params), dense.imbalance(params)
    return jnp.concatenate(
        [
            jnp.reshape(a - b - hyper.eta * rate, (-1,))
            for a, b, rate in zip(after, before, rates, strict=True)
        ]
    )


@dataclasses.dataclass(frozen=True)
class Dense(Network):
    """Dense deep linear networks with hidden `widths = (h_1, ..., h_{L-1})` (docs/dense.md)."""

    widths: tuple[int, ...]

    name: ClassVar[str] = "dense"
    quantities: ClassVar[tuple[str, ...]] = QUANTITIES
    step_quantities: ClassVar[tuple[str, ...]] = ("imbalance_drift_residual",)

    @property
    def extra_quantities(self) -> tuple[str, ...]:
        """`EXTRA_QUANTITIES` and the beta-only diagnostics of `quantities.BETA_DIAGNOSTICS`."""
        return EXTRA_QUANTITIES + _quantities().BETA_DIAGNOSTICS

    def __post_init__(self):
        object.__setattr__(self, "widths", dense.check_widths(self.widths))

    @classmethod
    def from_options(cls, *, widths=None) -> "Dense":
        if widths is None:
            raise ValueError(
                'widths must be given for network = "dense": the hidden widths (h_1, ..., h_(L-1))'
            )
        return cls(widths)

    @property
    def depth(self) -> int:
        return len(self.widths) + 1

    def end_to_end(self, params) -> jax.Array:
        return dense.end_to_end(params)

    def pullback(self, params, beta_grad: jax.Array):
        return dense.pullback(params, beta_grad)

    def grad(self, params, problem: Problem):
        return dense.grad(params, problem)

    def expected_grad(self, params, problem: Problem, sigma: ArrayLike):
        return dense.expected_grad(params, problem, sigma)

    def num_layers(self, params) -> int:
        return len(params)

    def layer_mask(self, params, layer: jax.Array):
        """One scalar per matrix: 1 for `W_{layer + 1}`."""
        return tuple((layer == k).astype(w.dtype) for k, w in enumerate(params))

    def check_depth(self, depth) -> int:
        if depth is None:
            return self.depth
        depth = _checks.check_depth(depth)
        if depth != self.depth:
            raise ValueError(
                f"depth ({depth}) does not match widths {self.widths}: a dense network with "
                f"{len(self.widths)} hidden layer(s) has depth {self.depth}"
            )
        return depth

    def check_init(self, init, depth: int) -> float | tuple:
        """A finite real scale, or one matrix per layer, `W_l [h_l, h_{l-1}]` (`h_0 = d` and
        `h_L = 1`), as nested tuples of floats."""
        if not isinstance(init, (tuple, list)):
            _checks.check_real("init", init)
            if np.ndim(init) == 0:
                return _checks.as_float("init", init)
            raise ValueError(
                "init must be a scale or a tuple of matrices (W_1 [h_1, d], ..., W_L [1, h_(L-1)]) "
                f"for a dense network, got {_checks.describe(init)}"
            )
        if len(init) != self.depth:
            raise ValueError(
                f"init must hold one matrix per layer, depth = {self.depth}, got {len(init)}"
            )
        matrices = []
        for k, matrix in enumerate(init):
            dtype = _checks.check_real(f"init[{k}]", matrix)
            matrices.append(np.asarray(matrix, dtype=dtype))
            _checks.check_finite(f"init[{k}]", matrices[-1])
        d = matrices[0].shape[1] if matrices[0].ndim == 2 else None
        expected = dense.layer_shapes(d, self.widths) if d else None
        shapes = tuple(m.shape for m in matrices)
        if d is None or shapes != expected:
            raise ValueError(
                f"init must be matrices of shapes {expected or '((h_1, d), ...)'} for widths "
                f"{self.widths}, got shapes {shapes}"
            )
        return tuple(tuple(tuple(float(v) for v in row) for row in m) for m in matrices)

    def check_init_seed(self, init_seed, init) -> int | None:
        if isinstance(init, tuple):
            if init_seed is not None:
                raise ValueError(
                    "init_seed: a start given as matrices is not random; leave it unset, got "
                    f"{_checks.describe(init_seed)}"
                )
            return None
        if init_seed is None:
            return 0
        return _checks.as_int("init_seed", init_seed, minimum=0, maximum=2**32 - 1)

    def base_init(self, init, init_seed, depth: int, d: int, dtype) -> tuple[tuple, float]:
        if isinstance(init, tuple):
            base = tuple(jnp.asarray(m, dtype) for m in init)
            if base[0].shape[1] != d:
                raise ValueError(
                    f"init must start with W_1 of shape [h_1, d] = ({self.widths[0]}, {d}) (d "
                    f"the problem's), got {base[0].shape}"
                )
            return base, 1.0
        with jax.enable_x64(True):  # the same start in float32 and float64 runs
            drawn = dense.init_params(jax.random.key(init_seed), d, self.widths, 1.0, jnp.float64)
            drawn = [np.asarray(w) for w in drawn]
        return tuple(jnp.asarray(w, dtype) for w in drawn), float(init)

    def num_params(self, depth: int, d: int) -> int:
        return sum(rows * columns for rows, columns in dense.layer_shapes(d, self.widths))

    def record_temporaries(self, quantities: tuple[str, ...], d: int) -> int:
        """`PRODUCT_COPIES` x the sum of `m ceil(k / TERMS) n` over the matrix products a record
        forms (`[m, k] @ [k, n]` in fixed order keeps one `[m, n]` sum per block of `TERMS`
        terms, `noisydln.linalg.matmul`): `W_l N W_l^T` of every layer and `B_k Sigma B_k^T` of
        every prefix `B_k = W_k ... W_1`, `[h_k, d]`; plus the output moment `W_l^T G W_l`,
        `[h_{l-1}, h_{l-1}]`, of every layer. None when only `CHEAP_QUANTITIES` are recorded."""
        if set(quantities) <= set(CHEAP_QUANTITIES):
            return 0
        shapes = dense.layer_shapes(d, self.widths)
        blocks = lambda k: -(-k // linalg.TERMS)  # noqa: E731
        layers = sum(
            rows * blocks(columns) * (rows + columns) + columns**2 for rows, columns in shapes
        )
        prefixes = sum(rows * blocks(d) * (rows + d) for rows, _ in shapes[1:-1])
        return PRODUCT_COPIES * (layers + prefixes)

    def record(self, params, problem: Problem, hyper, quantities, next_params=None, memory=None):
        """`(values, {})`: the recorded quantities of one state (see `DESCRIPTIONS`;
        docs/dense.md s1-3); nothing is carried to the next record (`top_eigenvalue` runs cold).

        `sharpness = dense.average_sharpness` (exactly 0 at sigma = 0) and `expected_loss =
        loss + sharpness`, as for the diagonal family; `imbalance_drift_residual` needs
        `next_params`. Shared with the diagonal family: `top_eigenvalue` of the Hessian
        (`eigen.dense_top_eigenvalue`) and the beta-only diagnostics of
        `quantities.beta_diagnostics` (`l1_norm`, `support_size`, `distance_to_limit`,
        `test_loss`; `distance_to_limit` measures the distance to the diagonal network's
        coordinate-wise limit formula, not to a limit of the dense network).
        """
        beta = dense.end_to_end(params)
        loss = dense.loss_of_beta(beta, problem)
        sharpness = dense.average_sharpness(params, problem, hyper.sigma)
        imbalances = dense.imbalance(params)
        gaps = dense.weighted_gap(params, problem, hyper.sigma)
        values = {
            "beta": beta,
            "imbalance_norm": _per_layer(imbalances, frobenius),
            "imbalance_trace": _per_layer(imbalances, linalg.trace),
            "weighted_gap_norm": _per_layer(gaps, frobenius),
            "weighted_gap_trace": _per_layer(gaps, linalg.trace),
            "loss": loss,
            "expected_loss": loss + sharpness,
            "sharpness": sharpness,
            "hessian_trace": dense.hessian_trace(params, problem),
        }
        if "imbalance_drift_residual" in quantities:
            values["imbalance_drift_residual"] = imbalance_drift_residual(
                params, next_params, problem, hyper
            )
        if "top_eigenvalue" in quantities:
            values["top_eigenvalue"] = eigen.dense_top_eigenvalue(params, problem)
        diagnostics = _quantities().beta_diagnostics
        values.update(diagnostics(beta, problem, hyper.sigma, len(params), quantities))
        return {name: values[name] for name in quantities}, {}

    def describe(self, name: str) -> tuple[str, str]:
        """`DESCRIPTIONS`, and `quantities.DESCRIPTIONS` for the shared diagnostics."""
        return DESCRIPTIONS[name] if name in DESCRIPTIONS else _quantities().DESCRIPTIONS[name]

    def dims(self, name: str, ndim: int) -> tuple[str, ...]:
        return DIMS.get(name, ())

    def layer_coordinate(self, depth: int) -> np.ndarray:
        """`1..depth - 1`: the hidden layer `l` of `D_l`."""
        return np.arange(1, depth)
