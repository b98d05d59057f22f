"""Monte Carlo estimates with error bars, checked against the closed forms of docs/theory.md."""

# Every check returns a `Report`: one `Row` per comparison (what, prediction, estimate, standard
# error, z) and a verdict fixed in advance: many z-scores are judged together by the largest
# |z| against the two-sided Gaussian quantile for that many tests (Bonferroni, level `alpha`),
# and comparisons with a known deterministic bias (O(eta) terms) state their allowance up front.

from noisydln.stats.balancing import check_balancing as check_balancing
from noisydln.stats.estimators import ALPHA as ALPHA
from noisydln.stats.estimators import combined_verdict as combined_verdict
from noisydln.stats.estimators import confidence_interval as confidence_interval
from noisydln.stats.estimators import drift as drift
from noisydln.stats.estimators import fit_decay_rate as fit_decay_rate
from noisydln.stats.estimators import gaussian_quantile as gaussian_quantile
from noisydln.stats.estimators import rounding_allowance as rounding_allowance
from noisydln.stats.estimators import standard_error as standard_error
from noisydln.stats.estimators import z_bound as z_bound
from noisydln.stats.estimators import z_scores as z_scores
from noisydln.stats.limits import check_limit as check_limit
from noisydln.stats.limits import gd_limit as gd_limit
from noisydln.stats.limits import is_diagonal as is_diagonal
from noisydln.stats.limits import predicted_limit as predicted_limit
from noisydln.stats.report import VERDICTS as VERDICTS
from noisydln.stats.report import Report as Report
from noisydln.stats.report import Row as Row
from noisydln.stats.report import combine as combine
from noisydln.stats.sharpness import check_sharpness as check_sharpness
from noisydln.stats.trajectory import check_trajectory as check_trajectory
from noisydln.stats.trajectory import expected_trajectories as expected_trajectories
from noisydln.stats.validation import validate as validate
