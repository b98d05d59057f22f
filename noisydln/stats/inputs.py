"""What a check accepts: a `GridResult` with its problem and config, or a results Dataset."""

import functools
import inspect

from noisydln.grid import GridResult
from noisydln.stats.report import Report, combine


def accepts_dataset(check):
    """Lets `check(result, problem, config, **options)` take a results Dataset as `result`.

    With a Dataset (from `run_experiment` or `results.load`) the problem and the configs are
    read from the file unless given, and the check runs on every static combination
    (algorithm, depth, noise) that the Dataset holds; each row's quantity names its
    combination. Select combinations first with `ds.sel(depth=[2])` and the like.
    """

    @functools.wraps(check)
    def wrapper(result, problem=None, config=None, **options) -> Report:
        if isinstance(result, GridResult):
            if problem is None or config is None:
                raise ValueError(
                    f"{check.__name__} needs the problem and the config of a GridResult"
                )
            return check(result, problem, config, **options)
        from noisydln import results  # noqa: PLC0415 (results builds on this package)

        problem = results.problem_of(result) if problem is None else problem
        combinations = results.grid_results(result)
        if not combinations:
            raise ValueError("the Dataset holds no static combination of its spec")
        wants_reference = "reference" in inspect.signature(check).parameters
        reports = []
        for labels, grid, own_config in combinations:
            extra = dict(options)
            if wants_reference and "reference" not in options:  # the run's own GD on L_R
                extra["reference"] = results.reference_result(result, labels["depth"])
            report = check(grid, problem, own_config if config is None else config, **extra)
            if len(combinations) > 1:
                tag = f" [{labels['algorithm']}, depth {labels['depth']}, {labels['noise']}]"
                rows = tuple(row._replace(quantity=row.quantity + tag) for row in report.rows)
                report = report._replace(rows=rows)
            reports.append(report)
        return combine(*reports, name=reports[0].name)

    return wrapper
