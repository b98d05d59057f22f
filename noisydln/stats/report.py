"""The report of a check: one `Row` per comparison, each with a verdict and what it means."""

import math
from typing import NamedTuple

import numpy as np

from noisydln.stats.estimators import z_bound

VERDICTS = ("pass", "fail", "not converged", "measured")
_SHOWN = {"pass": "pass", "fail": "FAIL", "not converged": "NOT CONVERGED", "measured": "measured"}


class Row(NamedTuple):
    """One comparison of an estimate with its prediction, or one measured quantity.

    Attributes:
      claim: the claim of the paper the row bears on ("balancing", "sharpness", "limit", ...).
      quantity: what is compared, and in which grid cell.
      prediction: the closed-form value (NaN for a `"measured"` row).
      estimate: the Monte Carlo estimate.
      standard_error: its standard error (0 for a deterministic quantity).
      z: the distance past the allowance in standard errors (NaN where the row is not a z-test).
      allowance: the deterministic difference allowed, fixed before looking (O(eta) bias,
        rounding); 0 if none.
      threshold: the bound the row is judged against: the |z| bound of its family of tests,
        or the tolerance of a deterministic comparison.
      verdict: one of `VERDICTS`: "pass", "fail" (converged, and away from theory beyond the
        allowance), "not converged" (the run is too short to judge: the note says how long
        is needed), "measured" (a quantity the simulator estimates with no prediction).
      note: in words, what was compared and, when it did not pass, why.
    """

    claim: str
    quantity: str
    prediction: float
    estimate: float
    standard_error: float
    z: float
    allowance: float
    threshold: float
    verdict: str
    note: str = ""

    @property
    def passed(self) -> bool:
        """Whether the row does not count against its report ("pass" or "measured")."""
        return self.verdict in ("pass", "measured")


def make_row(
    claim: str,
    quantity: str,
    *,
    prediction: float,
    estimate: float,
    verdict: str,
    standard_error: float = 0.0,
    z: float = math.nan,
    allowance: float = 0.0,
    threshold: float = math.nan,
    note: str = "",
) -> Row:
    """A `Row`, its verdict checked against `VERDICTS`."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    return Row(
        claim, quantity, float(prediction), float(estimate), float(standard_error), float(z),
        float(allowance), float(threshold), verdict, note,
    )  # fmt: skip


def _number(value: float, digits: str) -> str:
    return "-" if math.isnan(value) else format(value, digits)


class Report(NamedTuple):
    """The rows of a check; `passed` when no row is "fail" or "not converged"."""

    name: str
    rows: tuple[Row, ...]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def verdict(self) -> str:
        """ "fail" if a row failed, else "not converged" if one is, else "pass"."""
        verdicts = {row.verdict for row in self.rows}
        for worst in ("fail", "not converged"):
            if worst in verdicts:
                return worst
        return "pass"

    def table(self) -> str:
        """The rows as an aligned text table."""
        header = (
            "claim", "quantity", "prediction", "estimate", "std err", "allowance", "z",
            "threshold", "verdict", "note",
        )  # fmt: skip
        lines = [
            (
                r.claim,
                r.quantity,
                _number(r.prediction, ".6g"),
                _number(r.estimate, ".6g"),
                _number(r.standard_error, ".3g"),
                _number(r.allowance, ".3g"),
                _number(r.z, ".2f"),
                _number(r.threshold, ".3g"),
                _SHOWN[r.verdict],
                r.note,
            )
            for r in self.rows
        ]
        widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
        fmt = "  ".join(f"{{:{w}}}" for w in widths)
        title = {"pass": "passed", "fail": "FAILED", "not converged": "NOT CONVERGED"}
        out = [f"{self.name}: {title[self.verdict]}", fmt.format(*header)]
        out += [fmt.format(*line) for line in lines]
        return "\n".join(out)

    def to_frame(self):
        """The rows as a pandas DataFrame, one row per comparison (columns: `Row`'s fields)."""
        import pandas as pd  # noqa: PLC0415 (pandas comes with xarray; only needed here)

        return pd.DataFrame([row._asdict() for row in self.rows], columns=Row._fields)

    def __str__(self) -> str:
        return self.table()


def combine(*reports: Report, name: str = "validation") -> Report:
    """One report with the rows of several."""
    return Report(name=name, rows=tuple(row for report in reports for row in report.rows))


def judge(claim: str, pending, alpha: float) -> list[Row]:
    """Rows from `(fields, z)` pairs: every z-tested row judged in one Bonferroni family."""
    tests = sum(int(np.sum(~np.isnan(z))) for _, z in pending if z is not None)
    bound = z_bound(tests, alpha)
    rows = []
    for fields, z in pending:
        if z is not None:
            worst = float(np.nanmax(np.abs(z)))
            passed = worst < bound
            fields = dict(fields, z=worst, threshold=bound, verdict="pass" if passed else "fail")
            if not passed:
                fields["note"] += f"; off by more than the allowance ({worst:.1f} SE > {bound:.2f})"
        rows.append(make_row(claim, **fields))
    return rows
