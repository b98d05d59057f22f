"""NumPy float64 building blocks of the dense network for the per-seed reference tests
(`test_dense_grid_vs_numpy_reference.py`, `test_dense_rules_vs_numpy.py`): explicit matrix
products, written from docs/dense.md, sharing nothing with `noisydln.dense`."""

import numpy as np


def np_after_before(ws):
    """`a_l = (W_L ... W_(l+1))^T` `[h_l]` and `B_l = W_l ... W_1` `[h_l, d]`, `l = 0..L`."""
    after, before = [np.ones(1)], [np.eye(ws[0].shape[1])]
    for w in reversed(ws):
        after.insert(0, after[0] @ w)
    for w in ws:
        before.append(w @ before[-1])
    return after, before


def np_moments(ws, gram, sigma):
    """Input moments `N_0..N_L` and output moments `G_0..G_L` (docs/dense.md s2)."""
    inputs, outputs = [gram], [np.ones((1, 1))]
    for w in ws:
        inputs.append(w @ inputs[-1] @ w.T + sigma**2 * np.trace(inputs[-1]) * np.eye(len(w)))
    for w in reversed(ws):
        g = outputs[0]
        outputs.insert(0, w.T @ g @ w + sigma**2 * np.trace(g) * np.eye(w.shape[1]))
    return inputs, outputs


def cut(flat, ws):
    """The flat vector `[P]` as matrices shaped like `ws`, `W_1` first, each row-major."""
    offsets = np.cumsum([0] + [w.size for w in ws])
    return [flat[offsets[k] : offsets[k + 1]].reshape(w.shape) for k, w in enumerate(ws)]
