"""The figures of `noisydln.plot` against the Dataset they draw and against independent NumPy.

One small run (diagonal design with unequal `D_i`, depth 2, two noise levels, a step size that
converges and one that diverges) feeds every test. Lines are found by their `gid`; their data
must equal the Dataset's numbers, and the theory lines must equal closed forms written out here
in NumPy from the stored problem and the spec's start, not from `noisydln.theory`.
"""

import io
import math

import numpy as np
import pytest
import xarray as xr

from noisydln import plot, results
from noisydln.experiment import Experiment

INIT = np.array([[0.9, 0.8, 0.7, 0.9], [0.2, 0.3, 0.1, -0.2]])  # [depth, d], unbalanced
SIGMAS = (0.3, 0.5)
ETA, ETA_DIVERGING = 0.01, 3.0
STEPS = np.arange(0, 301, 25)
SPEC = f"""
name = "plot-test"
[problem]
n = 24
d = 4
design = "diagonal"
diag = [1.0, 2.0, 0.5, 1.5]
beta_star = [1.0, -0.6, 0.05, 0.0]
[simulation]
algorithm = "stochastic_sam"
num_steps = {STEPS[-1]}
record_every = {STEPS[1]}
init = {INIT.tolist()}
quantities = ["beta", "imbalance", "sharpness", "hessian_trace", "trace_gap", "sharpness_gap"]
[grid]
num_seeds = 8
sigmas = {list(SIGMAS)}
etas = [{ETA}, {ETA_DIVERGING}]
seed = 1
[run]
dtype = "float64"
"""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ds() -> xr.Dataset:
    with pytest.warns(RuntimeWarning, match="non-finite"):  # the eta = 3 cells diverge
        return results.run_experiment(Experiment.from_toml_text(SPEC))


def _moments(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """`(Sigma [d, d], b [d])` from the stored design and labels, in NumPy."""
    X, y = ds["X"].values, ds["y"].values
    return X.T @ X / len(y), X.T @ y / len(y)


def _soft(z: np.ndarray, sigma: float) -> np.ndarray:
    return np.sign(z) * np.maximum(np.abs(z) - sigma**2, 0.0)


def _artist(fig, gid: str):
    found = fig.findobj(lambda artist: artist.get_gid() == gid)
    assert len(found) == 1, f"{len(found)} artists with gid {gid!r}"
    return found[0]


def _cell(ds: xr.Dataset, sigma: float, eta: float = ETA) -> xr.Dataset:
    return ds.isel(algorithm=0, noise=0, init_scale=0).sel(depth=2, sigma=sigma, eta=eta)


def _gd_on_expected_loss(ds: xr.Dataset, sigma: float, eta: float) -> np.ndarray:
    """`w_2^2 - w_1^2` of GD on `L_R` (depth 2: `grad L + 2 sigma^2 D W`) at `STEPS`, `[R, d]`."""
    gram, b = _moments(ds)
    diag = np.diag(gram)
    w = INIT.copy()
    out = []
    for step in range(STEPS[-1] + 1):
        if step in STEPS:
            out.append(w[1] ** 2 - w[0] ** 2)
        r = 2 * (b - gram @ (w[0] * w[1]))
        w = w - eta * (-r * w[::-1] + 2 * sigma**2 * diag * w)
    return np.array(out)


def test_imbalance_theory_line_vs_numpy_flow(ds):
    fig = plot.imbalance_decay(ds)
    gram, _ = _moments(ds)
    diag, start = np.diag(gram), INIT[1] ** 2 - INIT[0] ** 2
    for sigma in SIGMAS:
        for i in range(4):
            line = _artist(fig, f"theory/sigma={sigma:g}/eta={ETA:g}/coord={i}")
            expected = start[i] * np.exp(-4 * sigma**2 * diag[i] * ETA * STEPS)
            np.testing.assert_allclose(line.get_xdata(), ETA * STEPS, rtol=1e-15)
            np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
            wrong = start[i] * np.exp(-4 * (1.1 * sigma) ** 2 * diag[i] * ETA * STEPS)
            assert np.max(np.abs(line.get_ydata() - wrong)) > 1e-3


def test_imbalance_simulation_and_gd_lines_vs_dataset(ds):
    fig = plot.imbalance_decay(ds, sigma=SIGMAS[1], eta=ETA, coords=[0, 2])
    cell = _cell(ds, SIGMAS[1])
    gd = _gd_on_expected_loss(ds, SIGMAS[1], ETA)
    for i in (0, 2):
        tag = f"sigma={SIGMAS[1]:g}/eta={ETA:g}/coord={i}"
        simulation = _artist(fig, f"simulation/{tag}")
        np.testing.assert_array_equal(
            simulation.get_ydata(), cell["imbalance_mean"].sel(layer=2, coord=i).values
        )
        np.testing.assert_allclose(_artist(fig, f"gd_LR/{tag}").get_ydata(), gd[:, i], rtol=1e-9)
    drawn = {a.get_gid() for a in fig.findobj(_has_line_gid) if a.get_gid().startswith("sim")}
    assert drawn == {f"simulation/sigma={SIGMAS[1]:g}/eta={ETA:g}/coord={i}" for i in (0, 2)}


def test_diverged_cells_draw_as_gaps(ds):
    cell = _cell(ds, SIGMAS[0], ETA_DIVERGING)
    assert int(cell["diverged"]) == 8 and int(cell["imbalance_count"][-1]) == 0
    fig = plot.imbalance_decay(ds)  # warnings are errors: no all-NaN complaint either
    tag = f"sigma={SIGMAS[0]:g}/eta={ETA_DIVERGING:g}/coord=0"
    assert np.isnan(_artist(fig, f"simulation/{tag}").get_ydata()[-1])
    fig.savefig(io.BytesIO(), format="png", dpi=40)


def test_limit_curve_vs_soft_thresholding(ds):
    fig = plot.limits(ds, tail=0.25)
    gram, b = _moments(ds)
    z = b / np.diag(gram)
    tail = math.ceil(0.25 * len(STEPS))
    for sigma in SIGMAS:
        tag = f"depth=2/sigma={sigma:g}"
        curve = _artist(fig, f"theory/{tag}")
        x = np.asarray(curve.get_xdata())
        assert x.min() < -np.abs(z).max() and x.max() > np.abs(z).max()
        np.testing.assert_allclose(curve.get_ydata(), _soft(x, sigma), rtol=1e-12, atol=1e-15)
        for sign in (-1, 1):
            edge = _artist(fig, f"threshold/{tag}/{sign:+d}")
            np.testing.assert_allclose(edge.get_xdata(), [sign * sigma**2] * 2, rtol=1e-12)
        markers = _artist(fig, f"simulation/{tag}")
        beta = _cell(ds, sigma)["beta_mean"].values[-tail:]
        np.testing.assert_allclose(markers.get_xdata(), z, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(markers.get_ydata(), beta.mean(axis=0), rtol=1e-14)


def test_sharpness_lines_vs_dataset_and_minima(ds):
    fig = plot.sharpness(ds)
    gram, b = _moments(ds)
    diag = np.diag(gram)
    for sigma in SIGMAS:
        cell = _cell(ds, sigma)
        trace, gap = cell["hessian_trace_mean"].values, cell["trace_gap_mean"].values
        tag = f"hessian_trace/sigma={sigma:g}"
        np.testing.assert_array_equal(_artist(fig, f"simulation/{tag}").get_ydata(), trace)
        np.testing.assert_allclose(_artist(fig, f"balanced/{tag}").get_ydata(), trace - gap)
        limit = _soft(b / diag, sigma)
        theory = _artist(fig, f"theory/{tag}").get_ydata()
        np.testing.assert_allclose(theory, [4 * diag @ np.abs(limit)] * 2, rtol=1e-12)
        least_s = diag @ ((np.abs(limit) + sigma**2) ** 2 - limit**2)
        theory = _artist(fig, f"theory/sharpness/sigma={sigma:g}").get_ydata()
        np.testing.assert_allclose(theory, [least_s] * 2, rtol=1e-12)


def test_phase_diagram_vs_shrinkage_factor(ds):
    fig = plot.phase_diagram(ds)
    image = _artist(fig, "theory/depth=2")
    corners = image.get_coordinates()  # shading="nearest": cell edges halfway between nodes
    z_nodes = 0.5 * (corners[0, :-1, 0] + corners[0, 1:, 0])
    s_nodes = 0.5 * (corners[:-1, 0, 1] + corners[1:, 0, 1])
    assert z_nodes.min() < -np.abs(ds["z"].values).max() and s_nodes.max() > max(SIGMAS)
    expected = _soft(z_nodes[None, :], s_nodes[:, None]) / z_nodes[None, :]
    np.testing.assert_allclose(image.get_array().reshape(expected.shape), expected, atol=1e-12)
    points = _artist(fig, "simulation/depth=2")
    gram, b = _moments(ds)
    z = b / np.diag(gram)
    keep = np.abs(z) > 1e-6
    tail = math.ceil(0.25 * len(STEPS))
    factors = [_cell(ds, s)["beta_mean"].values[-tail:].mean(0)[keep] / z[keep] for s in SIGMAS]
    np.testing.assert_allclose(points.get_array(), np.concatenate(factors), rtol=1e-12)
    expected_xy = [(zi, s) for s in SIGMAS for zi in z[keep]]
    np.testing.assert_allclose(points.get_offsets(), expected_xy, rtol=1e-12)


def test_deep_shrinkage_map_solves_the_stationary_equation():
    z = np.linspace(-1.0, 1.0, 40)
    sigmas = np.array([0.0, 0.3, 0.5])
    factor = plot.shrinkage_map(z, sigmas, 3)
    np.testing.assert_allclose(factor[0], 1.0, rtol=1e-12)  # sigma = 0: no shrinkage
    for s, row in zip(sigmas[1:], factor[1:], strict=True):
        beta = row * z
        moving = np.abs(z) > 3.0792 * s**3 * 1.001
        assert np.all(beta[np.abs(z) < 3.0792 * s**3 * 0.999] == 0) and moving.any()
        beta = beta[moving]
        recovered = beta * (1 + s**2 * np.abs(beta) ** (-2 / 3)) ** 2  # z = beta (1 + ...)^(L-1)
        np.testing.assert_allclose(recovered, z[moving], rtol=1e-9)


def test_save_figures_writes_four_valid_pngs_and_pdfs(ds, tmp_path):
    paths = plot.save_figures(ds, tmp_path / "new folder", pdf=True)
    names = ["imbalance_decay", "sharpness", "limits", "phase_diagram"]
    assert [p.name for p in paths] == [f"{n}{s}" for n in names for s in (".png", ".pdf")]
    assert sorted(paths) == sorted((tmp_path / "new folder").iterdir())
    for path in paths[0::2]:
        header = path.read_bytes()[:24]
        assert header[:8] == PNG_SIGNATURE and header[12:16] == b"IHDR"
        assert int.from_bytes(header[16:20], "big") > 600  # width in pixels at 150 dpi
    for path in paths[1::2]:
        assert path.read_bytes()[:5] == b"%PDF-"


def test_save_figures_skips_figures_without_inputs(ds, tmp_path):
    no_imbalance = ds.drop_vars([v for v in ds.data_vars if v.startswith("imbalance")])
    assert plot.supported_figures(no_imbalance) == ["sharpness", "limits", "phase_diagram"]
    paths = plot.save_figures(no_imbalance.drop_vars(["beta_mean"]), tmp_path)  # PNG only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phase_diagram.png", "sharpness.png"]
    assert sorted(paths) == sorted(tmp_path.iterdir())
    with pytest.raises(ValueError, match="sigma=0.7 is not in the dataset"):
        plot.limits(ds, sigma=0.7)
    with pytest.raises(ValueError, match="tail must be in"):
        plot.limits(ds, tail=0.0)


def test_figure_redrawn_identically_from_saved_file(ds, tmp_path):
    reloaded = results.load(results.save(ds, tmp_path / "results.nc"))
    rendered = []
    for source in (ds, reloaded):
        fig = plot.imbalance_decay(source, sigma=SIGMAS[0], eta=ETA)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=50)
        lines = {a.get_gid(): np.asarray(a.get_ydata()) for a in fig.findobj(_has_line_gid)}
        rendered.append((buffer.getvalue(), lines))
    (png_a, lines_a), (png_b, lines_b) = rendered
    assert lines_a.keys() == lines_b.keys() and len(lines_a) == 3 * 4
    for gid, values in lines_a.items():
        np.testing.assert_array_equal(values, lines_b[gid])
    assert png_a == png_b


def _has_line_gid(artist) -> bool:
    return bool(artist.get_gid()) and hasattr(artist, "get_ydata")
