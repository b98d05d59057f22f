"""Figures of a results Dataset (`results.run_experiment`): balancing, sharpness, limits, phase diagram.

Every public function takes the Dataset first and returns a `matplotlib.figure.Figure` built
without pyplot (no global state, nothing to close, safe on a headless machine), so a figure can
be redrawn from a results file at any later time. Selectors left as None take every value of
their axis (panels or colours) or a sensible single value (the first algorithm, noise and init
scale; the smallest step size for limits). Lines carry a `gid` such as
`"theory/sigma=0.3/eta=0.01/coord=0"` so that tests and scripts can find them.
"""

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import matplotlib as mpl
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from noisydln import theory

STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "figure.titlesize": 11,
    "legend.fontsize": 8,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.4,
}
FIGURES = ("imbalance_decay", "sharpness", "limits", "phase_diagram")
SE_MULTIPLE = 2.0  # bands and error bars are mean +- 2 standard errors
DPI = 150
TIME_LABEL = r"time $t = \eta \cdot \mathrm{step}$"
Z_LABEL = r"$z_i = b_i / \Sigma_{ii}$"

# ---------------------------------------------------------------- selecting from the Dataset


def _index(ds: xr.Dataset, dim: str, value) -> int:
    """Position of `value` on the axis `dim` (0 when `value` is None); a clear error if absent."""
    if value is None:
        return 0
    values = np.asarray(ds[dim].values)
    if values.dtype.kind in "iuf" and isinstance(value, (int, float, np.number)):
        hits = np.flatnonzero(np.isclose(values.astype(float), float(value), rtol=1e-9, atol=0))
    else:
        hits = np.flatnonzero(values == value)
    if hits.size == 0:
        raise ValueError(f"{dim}={value!r} is not in the dataset; it holds {values.tolist()}")
    return int(hits[0])


def _indices(ds: xr.Dataset, dim: str, values) -> list[int]:
    """Positions of `values` (a value or a sequence) on `dim`; every position when None."""
    if values is None:
        return list(range(ds.sizes[dim]))
    if np.ndim(values) == 0:
        values = [values]
    return [_index(ds, dim, v) for v in values]


def _static_cell(ds: xr.Dataset, algorithm, noise, init_scale) -> xr.Dataset:
    """`ds` at one algorithm, noise and init scale (the axes a figure does not compare)."""
    return ds.isel(
        algorithm=_index(ds, "algorithm", algorithm),
        noise=_index(ds, "noise", noise),
        init_scale=_index(ds, "init_scale", init_scale),
    )


def _smallest_eta(ds: xr.Dataset, eta) -> int:
    """`eta`'s position, or that of the smallest step size (least O(eta) bias) when None."""
    return int(np.argmin(ds["eta"].values)) if eta is None else _index(ds, "eta", eta)


def _values(array: xr.DataArray) -> np.ndarray:
    return np.asarray(array.values, dtype=float)


def _has(ds: xr.Dataset, name: str) -> bool:
    """Whether `ds` holds variable `name` with at least one finite value."""
    return name in ds.data_vars and bool(np.isfinite(_values(ds[name])).any())


def _finite_max(values, default: float) -> float:
    """Largest finite entry of `values`, `default` when there is none (never warns)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else default


def _tail_slice(num_records: int, tail: float) -> slice:
    """The last `tail` fraction of `num_records` records (at least one), as `stats.tail_window`."""
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be in (0, 1], got {tail}")
    return slice(num_records - max(1, math.ceil(tail * num_records)), None)


def tail_mean(cell: xr.Dataset, name: str, tail: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the last `tail` of the records of `name_mean`, and the mean of its `name_sem`.

    The mean of the per-record standard errors bounds the standard error of the tail average
    (records of one seed are correlated), as in `stats.tail_mean`.

    Args:
      cell: the Dataset at one cell, so that `name_mean` is `[step, *shape]`.
      name: a recorded quantity, e.g. "beta".
      tail: fraction of the records, in (0, 1].

    Returns:
      `(mean, se)`, each `[*shape]`; NaN where a record has no finite trajectory.
    """
    window = _tail_slice(cell.sizes["step"], tail)
    mean = _values(cell[f"{name}_mean"].isel(step=window))
    se = _values(cell[f"{name}_sem"].isel(step=window))
    return mean.mean(axis=0), se.mean(axis=0)


def is_diagonal_design(ds: xr.Dataset) -> bool:
    """Whether the stored design has a diagonal `Sigma = X^T X / n` (z_i then decouple, s4)."""
    if "diagonal_design" in ds.attrs:
        return bool(int(ds.attrs["diagonal_design"]))
    X = _values(ds["X"])
    gram = X.T @ X / X.shape[0]
    off = gram - np.diag(np.diag(gram))
    return bool(np.max(np.abs(off)) <= 1e-5 * np.max(np.abs(gram)))


# ---------------------------------------------------------------- drawing helpers


def _styled(draw: Callable[..., Figure]) -> Callable[..., Figure]:
    """Runs `draw` inside `matplotlib.rc_context(STYLE)` (fonts are fixed when artists are made)."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def _colours(n: int) -> list:
    """`n` distinguishable colours (tab10 up to ten, viridis beyond)."""
    if n <= 10:
        return [mpl.colormaps["tab10"](i) for i in range(n)]
    return [mpl.colormaps["viridis"](x) for x in np.linspace(0, 0.95, n)]


def _band(ax: Axes, x, mean, se, colour, gid: str, label: str) -> Line2D:
    """A solid mean line with a shaded mean +- 2 SE band; returns the line."""
    (line,) = ax.plot(x, mean, color=colour, gid=gid, label=label)
    ax.fill_between(
        x, mean - SE_MULTIPLE * se, mean + SE_MULTIPLE * se, color=colour, alpha=0.2, lw=0
    )
    return line


def _seeds_label(ds: xr.Dataset) -> str:
    return f"{int(ds.attrs['num_seeds'])} seeds" if "num_seeds" in ds.attrs else "all seeds"


def _simulation_label(ds: xr.Dataset, what: str = "mean") -> str:
    return f"simulation ({what} $\\pm$ 2 SE, {_seeds_label(ds)})"


def _cell_caption(cell: xr.Dataset) -> str:
    """`algorithm, noise, init scale` of a static cell, for titles."""
    return (
        f"{cell['algorithm'].item()}, {cell['noise'].item()} noise, "
        f"init $\\times$ {float(cell['init_scale']):g}"
    )


def _style_handle(style: str) -> Line2D:
    """A grey legend handle: a line style ("-", "--", ":") or a marker ("o", "x")."""
    if style in ("o", "x"):
        return Line2D([], [], color="0.3", linestyle="none", marker=style)
    return Line2D([], [], color="0.3", linestyle=style)


def _style_legend(fig: Figure, entries: Sequence[tuple[str, str]]) -> None:
    """A legend below the panels saying which style is simulation and which theory."""
    handles = [_style_handle(style) for style, _ in entries]
    labels = [label for _, label in entries]
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(entries), 2))


def _colour_legend(fig: Figure, colours, labels, where: str, title: str) -> None:
    handles = [
        Line2D([], [], color=c, label=label) for c, label in zip(colours, labels, strict=True)
    ]
    fig.legend(handles=handles, loc=f"outside {where}", title=title)


def _panels(
    nrows: int, ncols: int, width: float, height: float, **share
) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of panels; returns `(fig, axes: [nrows, ncols])`."""
    fig = Figure(figsize=(width * ncols + 2.6, height * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **share)
    return fig, axes


def _imbalance_label(layer: int) -> str:
    return rf"$\Delta_i = w_{{{layer},i}}^2 - w_{{1,i}}^2$"


def _symlog_threshold(mean, se) -> float:
    """The linear range of a symlog axis: the Monte Carlo noise floor (the median of 2 SE over
    the second half of the records), at most three decades below the largest |mean|, rounded
    down to a power of ten. Below it the mean is noise, so it is drawn linearly."""
    top = _finite_max(np.abs(mean), 1.0) or 1.0
    late = np.asarray(se, dtype=float)[se.shape[0] // 2 :]
    late = late[np.isfinite(late) & (late > 0)]
    floor = SE_MULTIPLE * float(np.median(late)) if late.size else 0.0
    return 10.0 ** math.floor(math.log10(min(max(floor, top * 1e-3), top)))


# ---------------------------------------------------------------- 1. imbalance decay


@_styled
def imbalance_decay(
    ds: xr.Dataset,
    *,
    depth: int = 2,
    sigma=None,
    eta=None,
    coords=None,
    algorithm=None,
    noise=None,
    init_scale=None,
    layer: int = 2,
) -> Figure:
    """Mean imbalance per coordinate against time, with the flow law and GD on L_R (s3).

    One panel per (eta, sigma): rows are step sizes (each row shares its time axis
    `t = eta * step`), columns noise levels. Per coordinate (one colour each): the mean
    over seeds of `w_l^2 - w_1^2` with a +-2 SE band (solid), the gradient-flow law
    `Delta_0 exp(-4 sigma^2 D_i t)` (`imbalance_flow`, dashed; depth 2) and GD on `L_R` from the
    same start (`imbalance_gd_LR`, dotted) where the dataset has them. Symlog y axis.

    Args:
      ds: results Dataset.
      depth: network depth (default 2, the depth with a closed-form law).
      sigma, eta: a value or a list; None takes every value (one panel each).
      coords: coordinates to draw (indices); None draws all.
      algorithm, noise, init_scale: one value each; None takes the first.
      layer: which imbalance `w_layer^2 - w_1^2` to draw (2..depth).

    Returns:
      The figure; lines have gids `"{simulation|theory|gd_LR}/sigma=../eta=../coord=.."`.
    """
    if "imbalance_mean" not in ds.data_vars:
        raise ValueError("the dataset has no recorded imbalance (quantity 'imbalance')")
    cell = _static_cell(ds, algorithm, noise, init_scale).isel(depth=_index(ds, "depth", depth))
    if not 2 <= layer <= int(cell["depth"]):
        raise ValueError(f"layer must be in 2..{int(cell['depth'])}, got {layer}")
    cell = cell.sel(layer=layer)
    sigmas, etas = _indices(ds, "sigma", sigma), _indices(ds, "eta", eta)
    chosen = _indices(ds, "coord", coords)
    colours = _colours(len(chosen))
    fig, axes = _panels(len(etas), len(sigmas), 3.6, 2.8, sharex="row", sharey=True)
    for row, j in enumerate(etas):
        for col, i in enumerate(sigmas):
            _imbalance_panel(axes[row][col], cell.isel(sigma=i, eta=j), chosen, colours)
    shown = cell.isel(sigma=sigmas, eta=etas, coord=chosen)
    linthresh = _symlog_threshold(_values(shown["imbalance_mean"]), _values(shown["imbalance_sem"]))
    axes[0][0].set_yscale("symlog", linthresh=linthresh)
    for ax in axes[-1]:
        ax.set_xlabel(TIME_LABEL)
    for row in axes:
        row[0].set_ylabel(_imbalance_label(layer))
    styles = [("-", _simulation_label(ds))]
    if _has(cell, "imbalance_flow"):
        styles.append(("--", r"theory: $\Delta_0\, e^{-4\sigma^2 D_i t}$ (gradient flow on $L_R$)"))
    if _has(cell, "imbalance_gd_LR"):
        styles.append((":", r"GD on $L_R$ (exact one-step recursion)"))
    _style_legend(fig, styles)
    diag = np.diag(_values(ds["X"]).T @ _values(ds["X"])) / ds.sizes["sample"]
    labels = [f"$i$ = {int(ds['coord'][c])} ($D_i$ = {diag[c]:.3g})" for c in chosen]
    _colour_legend(fig, colours, labels, "right upper", "coordinate")
    fig.suptitle(f"Imbalance decay, depth $L$ = {int(cell['depth'])}\n{_cell_caption(cell)}")
    return fig


def _imbalance_panel(ax: Axes, cell: xr.Dataset, chosen: list[int], colours) -> None:
    """One (sigma, eta) panel of `imbalance_decay`; `cell` is `[step, coord]`."""
    time = _values(cell["time"])
    mean, se = _values(cell["imbalance_mean"]), _values(cell["imbalance_sem"])
    flow = _values(cell["imbalance_flow"]) if "imbalance_flow" in cell else None
    gd = _values(cell["imbalance_gd_LR"]) if "imbalance_gd_LR" in cell else None
    sigma, eta = float(cell["sigma"]), float(cell["eta"])
    tag = f"sigma={sigma:g}/eta={eta:g}"
    for c, colour in zip(chosen, colours, strict=True):
        coord = f"{tag}/coord={int(cell['coord'][c])}"
        _band(ax, time, mean[:, c], se[:, c], colour, f"simulation/{coord}", "simulation")
        if flow is not None and np.isfinite(flow[:, c]).any():
            ax.plot(time, flow[:, c], "--", color=colour, zorder=3, gid=f"theory/{coord}")
        if gd is not None and np.isfinite(gd[:, c]).any():
            ax.plot(time, gd[:, c], ":", color=colour, lw=2, zorder=3, gid=f"gd_LR/{coord}")
    diverged = int(cell["diverged"])
    note = f", {diverged} diverged" if diverged else ""
    ax.set_title(rf"$\sigma$ = {sigma:g}, $\eta$ = {eta:g}{note}")


# ---------------------------------------------------------------- 2. sharpness

_SHARPNESS_PANELS = (
    ("hessian_trace", "trace_gap", "Hessian trace", r"$\mathrm{tr}\,\nabla^2 L(W)$"),
    ("sharpness", "sharpness_gap", "average sharpness", r"$S(W) = L_R(W) - L(W)$"),
)


@_styled
def sharpness(
    ds: xr.Dataset,
    *,
    depth=None,
    sigma=None,
    eta=None,
    algorithm=None,
    noise=None,
    init_scale=None,
) -> Figure:
    """Hessian trace and average sharpness against time, with their balanced minima (s2).

    Two panels (`tr hess L` and `S = L_R - L`), one colour per sigma. Each shows the mean
    over seeds with a +-2 SE band (solid); where `trace_gap` / `sharpness_gap` were recorded,
    the mean of `q - q_gap`, the least value over factorisations of each trajectory's own
    product (dashed); and the least value at the closed-form limit,
    `hessian_trace_min_at_limit` / `sharpness_min_at_limit` (dotted, horizontal).

    Args:
      ds: results Dataset.
      depth, eta, algorithm, noise, init_scale: one value each; None takes the first.
      sigma: a value or a list; None takes every value (one colour each).

    Returns:
      The figure; lines have gids `"{simulation|balanced|theory}/{quantity}/sigma=.."`.
    """
    panels = [p for p in _SHARPNESS_PANELS if f"{p[0]}_mean" in ds.data_vars]
    if not panels:
        raise ValueError("the dataset has neither 'hessian_trace' nor 'sharpness' recorded")
    cell = _static_cell(ds, algorithm, noise, init_scale)
    cell = cell.isel(depth=_index(ds, "depth", depth), eta=_index(ds, "eta", eta))
    sigmas = _indices(ds, "sigma", sigma)
    colours = _colours(len(sigmas))
    fig, axes = _panels(1, len(panels), 4.2, 3.3, sharex=True)
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, colour in zip(sigmas, colours, strict=True):
            _sharpness_lines(ax, cell.isel(sigma=i), panel, colour)
        ax.set(xlabel=TIME_LABEL, ylabel=panel[3], title=panel[2])
    styles = [("-", _simulation_label(ds))]
    if any(f"{p[1]}_mean" in ds.data_vars for p in panels):
        styles.append(("--", "balanced minimum for each trajectory's product (mean)"))
    styles.append((":", r"theory: least value at the limit $\beta_\infty$"))
    _style_legend(fig, styles)
    labels = [rf"$\sigma$ = {float(ds['sigma'][i]):g}" for i in sigmas]
    _colour_legend(fig, colours, labels, "right upper", "noise level")
    fig.suptitle(
        f"Sharpness, depth $L$ = {int(cell['depth'])}, $\\eta$ = {float(cell['eta']):g}\n"
        f"{_cell_caption(cell)}"
    )
    return fig


def _sharpness_lines(ax: Axes, cell: xr.Dataset, panel, colour) -> None:
    """The simulation, balanced-minimum and theory lines of one quantity at one sigma."""
    name, gap, _, _ = panel
    time = _values(cell["time"])
    mean = _values(cell[f"{name}_mean"])
    tag = f"{name}/sigma={float(cell['sigma']):g}"
    _band(ax, time, mean, _values(cell[f"{name}_sem"]), colour, f"simulation/{tag}", "simulation")
    if f"{gap}_mean" in cell.data_vars:
        balanced = mean - _values(cell[f"{gap}_mean"])
        ax.plot(time, balanced, "--", color=colour, gid=f"balanced/{tag}")
    at_limit = float(cell[f"{name}_min_at_limit"]) if f"{name}_min_at_limit" in cell else math.nan
    if math.isfinite(at_limit):
        ax.axhline(at_limit, linestyle=":", color=colour, lw=2, gid=f"theory/{tag}")


# ---------------------------------------------------------------- 3. limits


_limit = jax.jit(theory.limit, static_argnames="depth")  # one compile per depth and grid size


def _limit_curve(z: np.ndarray, sigma: float, depth: int) -> np.ndarray:
    """`theory.limit(z, sigma, depth)` as floats (no basin rule: the thresholding picture)."""
    return np.asarray(_limit(z, sigma, depth=depth), dtype=float)


def _limit_label(depths: Sequence[int]) -> str:
    """The legend entry of the theory curves for the depths drawn."""
    parts = []
    if 2 in depths:
        parts.append(r"$\mathrm{sign}(z)\,\max(|z| - \sigma^2, 0)$ (L = 2)")
    if any(depth > 2 for depth in depths):
        parts.append(r"$\mathrm{sign}(z)\,a_+^L$ if $|z| > \tau_L(\sigma)$, else 0 (L > 2)")
    return "theory: " + "; ".join(parts)


@_styled
def limits(
    ds: xr.Dataset,
    *,
    tail: float = 0.25,
    depth=None,
    sigma=None,
    eta=None,
    algorithm=None,
    noise=None,
    init_scale=None,
) -> Figure:
    """The limit of beta against the per-coordinate target z: shrinkage and thresholding (s4).

    One panel per depth, one colour per sigma. Markers: the mean over seeds of `beta_i`,
    averaged over the last `tail` of the records, at `z_i`, with error bars of 2 conservative
    standard errors (the mean of the per-record SEs). Curves: `theory.limit(z, sigma, depth)`
    over a fine grid (diagonal designs only; for others z does not decouple), dotted vertical
    lines at `z = +-threshold`; crosses: the dataset's `beta_limit` at each coordinate (with the
    basin rule from the start at depth >= 3, the weighted lasso for a general design).

    Args:
      ds: results Dataset.
      tail: fraction of the records averaged, in (0, 1].
      depth, sigma: a value or a list; None takes every value (panels, colours).
      eta: one step size; None takes the smallest (least O(eta) bias).
      algorithm, noise, init_scale: one value each; None takes the first.

    Returns:
      The figure; gids `"{simulation|theory|threshold|beta_limit}/depth=../sigma=.."`.
    """
    if "beta_mean" not in ds.data_vars:
        raise ValueError("the dataset has no recorded beta (quantity 'beta')")
    _tail_slice(ds.sizes["step"], tail)
    cell = _static_cell(ds, algorithm, noise, init_scale).isel(eta=_smallest_eta(ds, eta))
    depths, sigmas = _indices(ds, "depth", depth), _indices(ds, "sigma", sigma)
    colours = _colours(len(sigmas))
    diagonal = is_diagonal_design(ds)
    fig, axes = _panels(1, len(depths), 4.2, 3.6, sharey=True)
    for ax, a in zip(axes[0], depths, strict=True):
        for i, colour in zip(sigmas, colours, strict=True):
            _limit_lines(ax, cell.isel(depth=a, sigma=i), tail, colour, diagonal)
        _limit_axes(ax, cell.isel(depth=a), tail, diagonal)
    styles = [("o", _simulation_label(ds, "tail mean"))]
    if diagonal:
        styles.append(("-", _limit_label([int(ds["depth"][a]) for a in depths])))
        styles.append((":", r"threshold $\pm\tau_L(\sigma)$"))
    styles.append(("x", r"theory at each $z_i$ from the start (beta_limit)"))
    _style_legend(fig, styles)
    labels = [rf"$\sigma$ = {float(ds['sigma'][i]):g}" for i in sigmas]
    _colour_legend(fig, colours, labels, "right upper", "noise level")
    fig.suptitle(
        f"Limits: tail mean of $\\beta$ vs $z$, $\\eta$ = {float(cell['eta']):g}\n"
        f"{_cell_caption(cell)}"
    )
    return fig


def _limit_lines(ax: Axes, cell: xr.Dataset, tail: float, colour, diagonal: bool) -> None:
    """Markers, theory curve, thresholds and `beta_limit` of one (depth, sigma)."""
    depth, sigma = int(cell["depth"]), float(cell["sigma"])
    tag = f"depth={depth}/sigma={sigma:g}"
    z = _values(cell["z"])
    mean, se = tail_mean(cell, "beta", tail)
    bars = ax.errorbar(z, mean, yerr=SE_MULTIPLE * se, fmt="o", ms=5, color=colour, capsize=2)
    bars.lines[0].set_gid(f"simulation/{tag}")
    if diagonal:
        top = 1.1 * _finite_max(np.abs(z), 1.0)
        grid = np.linspace(-top, top, 801)
        ax.plot(grid, _limit_curve(grid, sigma, depth), color=colour, gid=f"theory/{tag}")
        tau = float(cell["threshold"])
        for sign in (-1, 1):
            ax.axvline(sign * tau, ls=":", color=colour, lw=1, gid=f"threshold/{tag}/{sign:+d}")
    if "beta_limit" in cell and np.isfinite(_values(cell["beta_limit"])).any():
        limit = _values(cell["beta_limit"])
        ax.plot(z, limit, "x", ms=7, mew=1.5, color=colour, gid=f"beta_limit/{tag}")


def _limit_axes(ax: Axes, cell: xr.Dataset, tail: float, diagonal: bool) -> None:
    """Labels, the identity line and the title of one depth's limit panel."""
    top = 1.1 * _finite_max(np.abs(_values(cell["z"])), 1.0)
    ax.plot([-top, top], [-top, top], color="0.75", lw=0.8, zorder=0, gid="identity")
    steps = int(cell["step"][-1])
    design = "" if diagonal else " (non-diagonal design: no curve)"
    ax.set(xlabel=Z_LABEL, ylabel=r"$\beta_\infty$ (tail mean of $\beta_i$)")
    ax.set_title(f"depth $L$ = {int(cell['depth'])}, last {tail:.0%} of {steps} steps{design}")


# ---------------------------------------------------------------- 4. phase diagram


def shrinkage_map(z: np.ndarray, sigmas: np.ndarray, depth: int) -> np.ndarray:
    """The shrinkage factor `theory.limit(z, sigma, depth) / z` on a grid (docs/theory.md s4).

    Args:
      z: targets, `[Z]`, none of them 0.
      sigmas: noise levels, `[S]`.
      depth: network depth L >= 2.

    Returns:
      `[S, Z]`, in [0, 1].

    Examples:
      >>> import numpy as np
      >>> shrinkage_map(np.array([-1.0, 0.5, 0.2]), np.array([0.5]), 2)  # 1 - sigma^2 / |z|, or 0
      array([[0.75, 0.5 , 0.  ]])
    """
    values = jax.vmap(lambda s: _limit(z, s, depth=depth))(np.asarray(sigmas, dtype=float))
    return np.asarray(values, dtype=float) / np.asarray(z, dtype=float)[None, :]


@_styled
def phase_diagram(
    ds: xr.Dataset,
    *,
    depth=None,
    eta=None,
    algorithm=None,
    noise=None,
    init_scale=None,
    tail: float = 0.25,
) -> Figure:
    """The closed-form limit over (z, sigma) per depth, with the simulated tail means (s4).

    The image is the shrinkage factor `theory.limit(z, sigma, L) / z` on
    `z in [-max|z|, max|z|] x sigma in [0, max sigma]` (a little padding included); white
    dashed curves are the thresholds `z = +-tau_L(sigma)` (`theory.threshold`); circles are the
    dataset's tail means of `beta_i / z_i` at `(z_i, sigma)` for every sigma of the grid,
    coloured by the same map (coordinates with `z_i` = 0 are left out).

    Args:
      ds: results Dataset.
      depth: a value or a list; None takes every value (one panel each).
      eta: one step size; None takes the smallest.
      algorithm, noise, init_scale: one value each; None takes the first.
      tail: fraction of the records averaged, in (0, 1].

    Returns:
      The figure; the image has gid `"theory/depth=.."`, the scatter `"simulation/depth=.."`.
    """
    _tail_slice(ds.sizes["step"], tail)
    cell = _static_cell(ds, algorithm, noise, init_scale).isel(eta=_smallest_eta(ds, eta))
    depths = _indices(ds, "depth", depth)
    fig, axes = _panels(1, len(depths), 4.0, 3.4, sharey=True)
    norm, cmap = Normalize(0.0, 1.0), mpl.colormaps["viridis"]
    for ax, a in zip(axes[0], depths, strict=True):
        image = _phase_panel(ax, cell.isel(depth=a), tail, norm, cmap)
    fig.colorbar(image, ax=axes[0].tolist(), label=r"shrinkage factor $\beta_\infty / z$")
    design = "" if is_diagonal_design(ds) else " (theory of a diagonal design)"
    fig.suptitle(
        f"Phase diagram of the limit{design}\nimage: theory; circles: simulation "
        f"(tail mean, $\\eta$ = {float(cell['eta']):g}, {_seeds_label(ds)})"
    )
    return fig


def _phase_panel(ax: Axes, cell: xr.Dataset, tail: float, norm, cmap):
    """One depth: image, threshold curves and simulated points; returns the image."""
    depth = int(cell["depth"])
    z = _values(cell["z"])
    sigmas = _values(cell["sigma"])
    z_top = 1.05 * _finite_max(np.abs(z), 1.0)
    s_top = 1.1 * _finite_max(sigmas, 0.0) or 1.0
    z_grid = np.linspace(-z_top, z_top, 300)  # an even count: 0 is not a node
    s_grid = np.linspace(0.0, s_top, 200)
    factor = shrinkage_map(z_grid, s_grid, depth)
    image = ax.pcolormesh(
        z_grid, s_grid, factor, cmap=cmap, norm=norm, shading="nearest", rasterized=True
    )
    image.set_gid(f"theory/depth={depth}")
    tau = np.asarray(theory.threshold(s_grid, depth), dtype=float)
    for sign in (-1, 1):
        ax.plot(
            sign * tau,
            s_grid,
            "--",
            color="white",
            lw=1.2,
            gid=f"threshold/depth={depth}/{sign:+d}",
        )
    if "beta_mean" in cell.data_vars:
        _phase_points(ax, cell, tail, norm, cmap)
    ax.set(xlim=(-z_top, z_top), ylim=(0, s_top), xlabel=Z_LABEL, ylabel=r"$\sigma$")
    ax.set_title(f"depth $L$ = {depth}; dashed: $z = \\pm\\tau_L(\\sigma)$")
    ax.grid(False)
    return image


def _phase_points(ax: Axes, cell: xr.Dataset, tail: float, norm, cmap) -> None:
    """Scatter of simulated `beta / z` at `(z_i, sigma)` for every sigma of `cell`."""
    z = _values(cell["z"])
    keep = np.abs(z) > 1e-6 * _finite_max(np.abs(z), 1.0)
    points, colours = [], []
    for i in range(cell.sizes["sigma"]):
        mean, _ = tail_mean(cell.isel(sigma=i), "beta", tail)
        sigma = float(cell["sigma"][i])
        points += [(zi, sigma) for zi in z[keep]]
        colours.append(mean[keep] / z[keep])
    xy = np.asarray(points, dtype=float).reshape(-1, 2)
    ax.scatter(
        xy[:, 0], xy[:, 1], c=np.concatenate(colours), cmap=cmap, norm=norm, s=36,
        edgecolors="black", linewidths=0.8, gid=f"simulation/depth={int(cell['depth'])}",
        plotnonfinite=True,
    )  # fmt: skip


# ---------------------------------------------------------------- all figures to files


def supported_figures(ds: xr.Dataset) -> list[str]:
    """The names in `FIGURES` whose inputs `ds` holds.

    `imbalance_decay` needs the imbalance and depth 2, `sharpness` the Hessian trace or the
    average sharpness, `limits` beta, `phase_diagram` a diagonal design (z must decouple).
    Every figure draws the diagonal network's closed forms: none for another network's results
    (`ds.attrs["network"]`).
    """
    if ds.attrs.get("network", "diagonal") != "diagonal":
        return []
    depths = np.asarray(ds["depth"].values).tolist()
    needs = {
        "imbalance_decay": "imbalance_mean" in ds.data_vars and 2 in depths,
        "sharpness": any(f"{p[0]}_mean" in ds.data_vars for p in _SHARPNESS_PANELS),
        "limits": "beta_mean" in ds.data_vars,
        "phase_diagram": "z" in ds.data_vars and is_diagonal_design(ds),
    }
    return [name for name in FIGURES if needs[name]]


def save_figures(ds: xr.Dataset, out_dir: str | Path, *, pdf: bool = False) -> list[Path]:
    """Draws every figure `ds` supports with its defaults and writes it to `out_dir`.

    Args:
      ds: results Dataset.
      out_dir: folder (created if missing); files are `<figure name>.png` (and `.pdf`).
      pdf: also write a PDF of each figure.

    Returns:
      The paths written, PNG before PDF for each figure, in the order of `FIGURES`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    draw = {
        "imbalance_decay": imbalance_decay,
        "sharpness": sharpness,
        "limits": limits,
        "phase_diagram": phase_diagram,
    }
    paths = []
    for name in supported_figures(ds):
        fig = draw[name](ds)
        for suffix in (".png", ".pdf") if pdf else (".png",):
            path = out_dir / f"{name}{suffix}"
            fig.savefig(path, dpi=DPI)
            paths.append(path)
    return paths
