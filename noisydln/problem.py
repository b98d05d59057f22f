"""Linear-regression problems: design, teacher, labels and their sufficient statistics."""

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from noisydln import _checks, _draws

DESIGNS = ("gaussian", "orthogonal", "diagonal")

# The numbers of a problem are computed by the small jitted functions below, one compiled
# program each per shape: outside `jit`, every `jnp` operation would compile a program of its
# own (about 40 of them, 2 s, on a problem's first call). Checks on values run on the host.


class Problem(NamedTuple):
    """A regression problem `y = X beta_star + noise` and its sufficient statistics.

    The loss of docs/theory.md section 1, `(1/n) ||y - X beta||^2`, only needs `gram`, `xty` and
    `yty`; `X` and `y` are kept for users and for independent checks. Held-out data `(X_t, y_t)`
    (`n_t` rows), when there are some, are kept as their statistics alone, which give the
    recorded `test_loss = (1/n_t) ||y_t - X_t beta||^2`.

    Attributes:
      X: design, `[n, d]`.
      y: labels, `[n]`.
      beta_star: the teacher, `[d]` (NaN where unknown, as for `problem_from_data` without one).
      gram: `Sigma = X^T X / n`, `[d, d]`.
      xty: `b = X^T y / n`, `[d]`.
      yty: `y^T y / n`, `[]`.
      test_gram: `X_t^T X_t / n_t`, `[d, d]`.
      test_xty: `X_t^T y_t / n_t`, `[d]`.
      test_yty: `y_t^T y_t / n_t`, `[]`.

    Without held-out data the three are empty arrays (`[0, 0]`, `[0]`, `[0]`) of the
    problem's dtype (`make_problem` and `problem_from_data`; every field stays an array), or
    None (the default of a `Problem` built field by field); `has_test_data` tells.
    """

    X: jax.Array
    y: jax.Array
    beta_star: jax.Array
    gram: jax.Array
    xty: jax.Array
    yty: jax.Array
    test_gram: jax.Array | None = None
    test_xty: jax.Array | None = None
    test_yty: jax.Array | None = None

    @property
    def n(self) -> int:
        """Number of samples."""
        return self.X.shape[0]

    @property
    def d(self) -> int:
        """Number of coordinates."""
        return self.X.shape[1]

    @property
    def has_test_data(self) -> bool:
        """Whether the problem holds held-out statistics (for `test_loss`)."""
        return self.test_gram is not None and jnp.size(self.test_gram) > 0

    @property
    def gram_diag(self) -> jax.Array:
        """`D = diag(Sigma)`, the only part of the design the noise penalty sees, `[d]`."""
        return jnp.diagonal(self.gram)


def problem_from_data(
    X: ArrayLike,
    y: ArrayLike,
    beta_star: ArrayLike | None = None,
    *,
    X_test: ArrayLike | None = None,
    y_test: ArrayLike | None = None,
) -> Problem:
    """Builds a `Problem` from a user's own data.

    Float64 data are stored as float32, with a `UserWarning`, when JAX's x64 mode is off (its
    default): call `jax.config.update("jax_enable_x64", True)` first, or build the problem inside
    `with jax.enable_x64(True):`, to keep float64.

    Args:
      X: design, `[n, d]`, real numbers (integers are converted to floats).
      y: labels, `[n]`.
      beta_star: optional known true parameter, `[d]`; NaN-filled when not given.
      X_test, y_test: optional held-out data, `[n_t, d]` and `[n_t]` (both or neither): kept as
        their statistics `test_gram`, `test_xty`, `test_yty` (in `X`'s dtype), for `test_loss`.

    Returns:
      The `Problem`, in the floating dtype of `X` (JAX's default float for integer data).
    """
    x_dtype = _checks.check_real("X", X)
    shape = tuple(np.shape(X))
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"X must be a non-empty matrix [n, d], got shape {shape}")
    n, d = shape
    _checks.check_real("y", y)
    _checks.check_shape("y", y, (n,), "[n]")
    if beta_star is not None:
        _checks.check_real("beta_star", beta_star)
        _checks.check_shape("beta_star", beta_star, (d,), "[d]")
    wanted = x_dtype if jnp.issubdtype(x_dtype, jnp.floating) else np.dtype(np.float64)
    dtype = jax.dtypes.canonicalize_dtype(wanted)
    _warn_if_float64_dropped(dtype, X, y, beta_star)
    _check_size("X is", n, d, dtype)
    X = _checks.real_array("X", X, dtype)
    y = _checks.real_array("y", y, dtype)
    _checks.check_finite("X", X)
    _checks.check_finite("y", y)
    if beta_star is None:
        beta_star = jax.device_put(np.full((d,), np.nan, dtype))
    else:
        beta_star = _checks.real_array("beta_star", beta_star, dtype)
        _checks.check_finite("beta_star", beta_star)
    gram, xty, yty = _statistics(X, y)
    problem = Problem(X=X, y=y, beta_star=beta_star, gram=gram, xty=xty, yty=yty)
    if not _is_finite(problem.gram, problem.xty, problem.yty):
        raise _Overflow(
            f"X and y are too large for {np.dtype(dtype)}: X^T X / n, X^T y / n or y^T y / n "
            "overflows; rescale the data (or use float64)"
        )
    if X_test is None and y_test is None:
        return problem._replace(**no_test_data(dtype))
    if X_test is None or y_test is None:
        raise ValueError("give both X_test and y_test (held-out data), or neither")
    return problem._replace(**_held_out_statistics(X_test, y_test, d, dtype))


@jax.jit
def _statistics(X: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(X^T X / n, X^T y / n, y^T y / n)` of `X [n, d]`, `y [n]`; the first made exactly
    symmetric, so that `beta @ gram == gram @ beta`."""
    n = X.shape[0]
    gram = X.T @ X / n
    return (gram + gram.T) / 2, X.T @ y / n, y @ y / n


def no_test_data(dtype) -> dict:
    """The held-out fields of a problem without held-out data: empty arrays of `dtype`."""
    empty = jax.device_put(np.zeros((0,), dtype))
    empty_matrix = jax.device_put(np.zeros((0, 0), dtype))
    return {"test_gram": empty_matrix, "test_xty": empty, "test_yty": empty}


def _held_out_statistics(X_test, y_test, d: int, dtype) -> dict:
    """`{test_gram, test_xty, test_yty}` of held-out data, checked like the training data."""
    _checks.check_real("X_test", X_test)
    shape = tuple(np.shape(X_test))
    if len(shape) != 2 or shape[0] < 1 or shape[1] != d:
        raise ValueError(f"X_test must be a non-empty matrix [n_t, d] with d = {d}, got {shape}")
    _checks.check_real("y_test", y_test)
    _checks.check_shape("y_test", y_test, shape[:1], "[n_t]")
    X_test = _checks.real_array("X_test", X_test, dtype)
    y_test = _checks.real_array("y_test", y_test, dtype)
    _checks.check_finite("X_test", X_test)
    _checks.check_finite("y_test", y_test)
    names = ("test_gram", "test_xty", "test_yty")
    statistics = dict(zip(names, _statistics(X_test, y_test), strict=True))
    if not _is_finite(*statistics.values()):
        raise _Overflow(
            f"X_test and y_test are too large for {np.dtype(dtype)}: their statistics overflow; "
            "rescale the data (or use float64)"
        )
    return statistics


class _Overflow(ValueError):
    """The data's sufficient statistics overflow their dtype."""


def _is_finite(*arrays) -> bool:
    """Whether every entry is finite (True for traced arrays, whose numbers are unknown)."""
    return any(_checks.is_traced(a) for a in arrays) or all(
        bool(np.all(np.isfinite(np.asarray(a)))) for a in arrays
    )


def _warn_if_float64_dropped(dtype, X, y, beta_star) -> None:
    """Warns when float64 arrays are about to be stored as float32 because x64 is off.

    Only arrays that carry a float64 dtype count (NumPy or JAX arrays), not Python floats,
    which JAX treats as its default float; float64 labels next to a float32 design are stored
    as float32 whatever the x64 mode, as documented, so they do not count either.
    """
    if dtype != np.float32 or jax.dtypes.canonicalize_dtype(np.float64) == np.float64:
        return
    declared = {name: getattr(value, "dtype", None) for name, value in
                (("X", X), ("y", y), ("beta_star", beta_star))}  # fmt: skip
    if declared["X"] is not None and jnp.issubdtype(declared["X"], jnp.floating):
        declared = {"X": declared["X"]}  # the problem takes X's float dtype
    names = [name for name, dt in declared.items() if dt is not None and dt == np.float64]
    if names:
        warnings.warn(
            f"{', '.join(names)}: the data are float64 but are stored as float32 because "
            "jax_enable_x64 is off (JAX's default); to keep float64, call "
            'jax.config.update("jax_enable_x64", True) first or build the problem inside '
            "`with jax.enable_x64(True):`",
            UserWarning,
            stacklevel=3,
        )


def _check_size(names: str, n: int, d: int, dtype) -> None:
    """Raises if a problem's arrays (`X [n, d]`, `gram [d, d]`, ...) cannot fit in memory."""
    _checks.check_fits(
        names,
        f"the problem's X [n, d] and gram [d, d] with n = {n} and d = {d} in {np.dtype(dtype)}",
        (n * d + d * d + n + 3 * d) * np.dtype(dtype).itemsize,
    )


def sparse_teacher(
    key: jax.Array, d: int, k: int, values: ArrayLike | str = 1.0, dtype=None
) -> jax.Array:
    """A `k`-sparse parameter on the first `k` coordinates.

    Args:
      key: PRNG key (used only when `values="gaussian"`).
      d: dimension.
      k: number of non-zeros, `0 <= k <= d`.
      values: the non-zero values, a scalar or `[k]`, or `"gaussian"` for standard normal ones.
      dtype: float dtype (JAX's default float when None).

    Returns:
      `beta_star`, `[d]`.
    """
    d = _checks.as_int("d", d, minimum=0, maximum=None)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an integer in [0, d], got {_checks.describe(k)}")
    if k > d:
        raise ValueError(f"k must be <= d = {d}, got k = {k}")
    dtype = _checks.float_dtype(dtype)
    if isinstance(values, str):
        if values != "gaussian":
            raise ValueError(f'values must be a number, an array [k] or "gaussian", got {values!r}')
        _checks.check_key(key)
        return _gaussian_teacher(key, d, k, dtype)
    values = _checks.real_array("values", values, dtype)
    if values.ndim not in (0, 1) or (values.ndim == 1 and values.shape[0] != k):
        raise ValueError(f"values must be a scalar or have shape [k] = ({k},), got {values.shape}")
    _checks.check_finite("values", values)
    return _teacher(values, d, k)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _teacher(values: jax.Array, d: int, k: int) -> jax.Array:
    """`values` (scalar or `[k]`) on the first `k` of `d` coordinates, zeros elsewhere: `[d]`."""
    return jnp.zeros((d,), values.dtype).at[:k].set(jnp.broadcast_to(values, (k,)))


def _gaussian_teacher(key: jax.Array, d: int, k: int, dtype) -> jax.Array:
    return _teacher(_draws.standard_normal(key, (k,), dtype), d, k)


def _check_sizes(n, d) -> tuple[int, int]:
    """`(n, d)` as ints, or raises unless both are positive integers."""
    for name, value in (("n", n), ("d", d)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {_checks.describe(value)}")
    return int(n), int(d)


def _scaled_orthonormal_columns(key: jax.Array, n: int, d: int, dtype) -> jax.Array:
    """`sqrt(n)` times a random `[n, d]` matrix with orthonormal columns (Haar, via QR with
    sign fix): `X^T X / n = I`."""
    return _orthonormal_columns(_draws.standard_normal(key, (n, d), dtype))


@jax.jit
def _orthonormal_columns(gaussian: jax.Array) -> jax.Array:
    """`sqrt(n) Q` of `gaussian [n, d] = Q R`, the signs fixed by `R`'s diagonal."""
    q, r = jnp.linalg.qr(gaussian)
    root_n = jnp.sqrt(jnp.asarray(gaussian.shape[0], gaussian.dtype))
    return root_n * (q * jnp.sign(jnp.diagonal(r))[None, :])


@jax.jit
def _scale_columns(X: jax.Array, diag: jax.Array) -> jax.Array:
    """`X [n, d]` with column j times `sqrt(diag_j)` (`diag` scalar or `[d]`)."""
    return X * jnp.sqrt(jnp.broadcast_to(diag, X.shape[1:]))[None, :]


@jax.jit
def _scaled(scale: jax.Array, draws: jax.Array) -> jax.Array:
    return scale * draws


def _label_noise(key: jax.Array, noise_std: jax.Array, n: int, dtype) -> jax.Array:
    """`noise_std * eps`, `eps ~ N(0, I_n)`; zeros, drawn without compiling a sampler, when
    `noise_std` is a known 0."""
    if not _checks.is_traced(noise_std) and float(noise_std) == 0.0:
        return jax.device_put(np.zeros((n,), dtype))
    return _scaled(noise_std, _draws.standard_normal(key, (n,), dtype))


@jax.jit
def _labels(X: jax.Array, beta_star: jax.Array, noise: jax.Array) -> jax.Array:
    return X @ beta_star + noise


def make_design(
    key: jax.Array,
    n: int,
    d: int,
    design: str = "gaussian",
    diag: ArrayLike | None = None,
    dtype=None,
) -> jax.Array:
    """A random design matrix.

    Args:
      key: PRNG key.
      n, d: shape of the design.
      design: `"gaussian"` (i.i.d. standard normal entries), `"orthogonal"` (`X^T X / n = I`
        exactly) or `"diagonal"` (`X^T X / n = diag(diag)` exactly).
      diag: the diagonal of `X^T X / n` for `design="diagonal"`, scalar or `[d]`, entries >= 0.
      dtype: float dtype (JAX's default float when None).

    Returns:
      `X`, `[n, d]`.
    """
    _checks.check_key(key)
    n, d = _check_sizes(n, d)
    if not isinstance(design, str) or design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {_checks.describe(design)}")
    if diag is not None and design != "diagonal":
        raise ValueError(f'diag is only used with design="diagonal", got design={design!r}')
    dtype = _checks.float_dtype(dtype)
    _checks.check_fits("n and d are", f"X [n, d] with n = {n} and d = {d} in {dtype}",
                       n * d * dtype.itemsize)  # fmt: skip
    if design == "gaussian":
        return _draws.standard_normal(key, (n, d), dtype)
    if n < d:
        raise ValueError(f"a {design} design needs n >= d, got n = {n} < d = {d}")
    X = _scaled_orthonormal_columns(key, n, d, dtype)
    if design == "orthogonal":
        return X
    if diag is None:
        raise ValueError('design="diagonal" needs diag, the diagonal of X^T X / n (scalar or [d])')
    diag = _checks.real_array("diag", diag, dtype)
    if diag.ndim not in (0, 1) or (diag.ndim == 1 and diag.shape[0] != d):
        raise ValueError(f"diag must be a scalar or have shape [d] = ({d},), got {diag.shape}")
    _checks.check_nonnegative("diag", diag)
    return _scale_columns(X, diag)


def make_problem(
    key: jax.Array,
    n: int,
    d: int,
    *,
    design: str = "gaussian",
    diag: ArrayLike | None = None,
    k: int | None = None,
    values: ArrayLike | str = 1.0,
    beta_star: ArrayLike | None = None,
    noise_std: float = 0.0,
    n_test: int = 0,
    dtype=None,
) -> Problem:
    """Generates a regression problem `y = X beta_star + noise_std * eps`, with held-out data.

    Args:
      key: PRNG key; the design, the teacher and the label noise use independent sub-keys
        (`jax.random.split(key, 3)`), the held-out design and label noise two more
        (`jax.random.split(jax.random.fold_in(key, 1))`): the training data do not depend on
        `n_test`.
      n, d: number of samples and of coordinates.
      design: `"gaussian"`, `"orthogonal"` (`X^T X / n = I`, needs `n >= d`) or `"diagonal"`
        (`X^T X / n = diag(diag)`, needs `n >= d`).
      diag: the diagonal of `X^T X / n` for the diagonal design, scalar or `[d]`.
      k: a sparse teacher with `k` non-zeros on the first `k` coordinates (default `min(d, 5)`
        when `beta_star` is not given).
      values: the teacher's non-zero values (scalar, `[k]`, or `"gaussian"`).
      beta_star: a user-given teacher `[d]`, instead of `k` / `values`.
      noise_std: standard deviation of the Gaussian label noise, >= 0.
      n_test: rows of held-out data `y_t = X_t beta_star + noise_std * eps_t`, drawn like the
        training data (same design law, `diag` and teacher; an orthogonal or diagonal held-out
        design needs `n_test >= d`) and kept as their statistics (`Problem.test_gram`, ...),
        which the recorded `test_loss` needs; `n` is a natural choice. Default 0: none (a
        problem without held-out data is the one `problem_from_data(X, y, beta_star)` builds).
      dtype: float dtype (JAX's default float when None).

    Returns:
      The `Problem`.

    Examples:
      >>> import jax, noisydln
      >>> problem = noisydln.make_problem(jax.random.key(0), 50, 10, design="orthogonal", k=2)
      >>> problem.gram.shape, problem.beta_star[:3].tolist()
      ((10, 10), [1.0, 1.0, 0.0])
    """
    _checks.check_key(key)
    n, d = _check_sizes(n, d)
    n_test = _check_n_test(n_test, d, design)
    dtype = _checks.float_dtype(dtype)
    _check_size("n and d are", n, d, dtype)
    if n_test:
        _check_size("n_test and d are", n_test, d, dtype)
    _checks.check_nonnegative("noise_std", noise_std)
    _checks.check_scalar("noise_std", noise_std)
    if not _checks.is_traced(noise_std):  # (a Python int beyond int64 cannot meet an array)
        noise_std = jax.device_put(np.asarray(float(noise_std), dtype))
    key_design, key_teacher, key_noise = jax.random.split(key, 3)
    X = make_design(key_design, n, d, design, diag, dtype)
    if beta_star is not None:
        if k is not None:
            raise ValueError("give either beta_star or k (a sparse teacher), not both")
        beta_star = _checks.real_array("beta_star", beta_star, dtype)
        _checks.check_shape("beta_star", beta_star, (d,), "[d]")
        _checks.check_finite("beta_star", beta_star)
    else:
        beta_star = sparse_teacher(key_teacher, d, min(d, 5) if k is None else k, values, dtype)
    y = _labels(X, beta_star, _label_noise(key_noise, noise_std, n, dtype))
    too_large = (
        f"diag, values, beta_star or noise_std are too large for {dtype}: the design X or the "
        "labels X beta_star + noise_std eps"
    )
    if not _is_finite(X, y):
        raise ValueError(f"{too_large} overflow")
    held_out = {}
    if n_test:
        key_test_design, key_test_noise = jax.random.split(jax.random.fold_in(key, 1))
        X_test = make_design(key_test_design, n_test, d, design, diag, dtype)
        y_test = _labels(X_test, beta_star, _label_noise(key_test_noise, noise_std, n_test, dtype))
        if not _is_finite(X_test, y_test):
            raise ValueError(f"{too_large} overflow (held-out data)")
        held_out = {"X_test": X_test, "y_test": y_test}
    try:
        return problem_from_data(X, y, beta_star, **held_out)
    except _Overflow:
        raise ValueError(f"{too_large} give statistics (X^T X / n, ...) that overflow") from None


def _check_n_test(n_test, d: int, design) -> int:
    """`n_test` as an int, or raises unless it is 0 or a positive integer (at least `d` for an
    orthogonal or diagonal design)."""
    if isinstance(n_test, bool) or not isinstance(n_test, (int, np.integer)) or n_test < 0:
        raise ValueError(f"n_test must be a non-negative integer, got {_checks.describe(n_test)}")
    if 0 < n_test < d and design in ("orthogonal", "diagonal"):
        raise ValueError(f"a {design} held-out design needs n_test >= d = {d}, got {n_test}")
    return int(n_test)
