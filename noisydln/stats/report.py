"""The report of a check: one `Row` per comparison and the verdict of them all."""

from typing import NamedTuple


class Row(NamedTuple):
    """One comparison of an estimate with its prediction."""

    claim: str
    quantity: str
    prediction: float
    estimate: float
    standard_error: float
    z: float
    passed: bool
    note: str = ""


class Report(NamedTuple):
    """The rows of a check and its verdict (`passed`: every row passed)."""

    name: str
    rows: tuple[Row, ...]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def table(self) -> str:
        """The rows as an aligned text table."""
        header = ("claim", "quantity", "prediction", "estimate", "std err", "z", "verdict", "note")
        lines = [
            (
                r.claim,
                r.quantity,
                f"{r.prediction:.6g}",
                f"{r.estimate:.6g}",
                f"{r.standard_error:.3g}",
                f"{r.z:.2f}",
                "ok" if r.passed else "FAIL",
                r.note,
            )
            for r in self.rows
        ]
        widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
        fmt = "  ".join(f"{{:{w}}}" for w in widths)
        out = [f"{self.name}: {'passed' if self.passed else 'FAILED'}", fmt.format(*header)]
        out += [fmt.format(*line) for line in lines]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def combine(*reports: Report, name: str = "validation") -> Report:
    """One report with the rows of several."""
    return Report(name=name, rows=tuple(row for report in reports for row in report.rows))
